"""dvae_tutorial — the package behind the book *Discretized VAEs for Lossy Image
Compression*.

Each module backs one idea of the book (see ``GUIDE``-style map in the README):
``rate_distortion`` (chapter 1), ``quantization`` and ``distributions``
(chapters 2–3), ``rans`` and ``entropy_coding`` (chapter 3), ``data`` (datasets,
checksums, patches). Import what a chapter needs; nothing heavy runs on import.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
