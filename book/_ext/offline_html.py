"""Make the built HTML read offline: MathJax from the book itself, no CDN.

Sphinx (and so Jupyter Book 1.x) loads MathJax from a CDN unless
``mathjax_path`` names a file under ``_static``. ``_config.yml`` sets
``mathjax_path: mathjax/tex-mml-chtml.js``; this extension checks that setting
and copies the MathJax 3 distribution (the ``es5`` folder: the TeX input with
ams, the CHTML output with its fonts, and the extensions MathJax's autoloader
fetches on demand) into ``_build/html/_static/mathjax``.

The copy comes from the PyPI package ``django-static-mathjax`` (import name
``mathjax``; MathJax 3.2.2 as published by the MathJax project, no Django
dependency), which the ``book`` extra of pyproject.toml installs, so the README's
book command brings it into a fresh venv. Nothing is vendored in this repository.

It also drops repeated inline ``<script>`` blocks from each page: with Sphinx 7
the ``const THEBE_JS_URL = …`` block of sphinx-thebe (and sphinx-togglebutton's
selector) is emitted twice, and the second ``const`` throws a SyntaxError in
every page. ``.ci/check_browser.py`` checks the result in Chromium.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.fileutil import copy_asset

TARGET = "mathjax"  # under _static/: the folder mathjax_path points into


def mathjax_dist() -> Path:
    """The installed MathJax 3 ``es5`` folder (from django-static-mathjax)."""
    spec = find_spec("mathjax")
    for root in (spec.submodule_search_locations or []) if spec else []:
        es5 = Path(root) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    raise ExtensionError(
        "offline_html: no MathJax copy found; install the book extra "
        '(python -m pip install -e ".[book]"), which brings django-static-mathjax'
    )


def _check_config(app: Sphinx, config) -> None:
    path = config.mathjax_path or ""
    if "://" in path or path.startswith("/") or not path.startswith(f"{TARGET}/"):
        raise ExtensionError(
            f"offline_html: mathjax_path is {path!r}; set it to a file under "
            f"{TARGET}/ (e.g. {TARGET}/tex-mml-chtml.js) so that no CDN is used"
        )
    if not (mathjax_dist() / path.removeprefix(f"{TARGET}/")).is_file():
        raise ExtensionError(f"offline_html: {path} is not in the MathJax copy")


def _copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if exc is None and app.builder.format == "html":
        copy_asset(str(mathjax_dist()), str(Path(app.outdir) / "_static" / TARGET))


def _drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, kept = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        # An inline script's filename is None or "" depending on who added it.
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _check_config)
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    app.connect("build-finished", _copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
