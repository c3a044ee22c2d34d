"""Write the package reference's module list at build time, so new modules appear.

``book/appendix_package_reference.md`` holds one MyST comment line::

    % package-modules: dvae_tutorial

On Sphinx's ``source-read`` event this extension replaces that line with
Markdown: a table of every public module of the package (name and the first
line of its docstring), then one section per module with an ``automodule``
directive in an ``eval-rst`` block (``sphinx.ext.autodoc``; Google-style ``Args:``/``Returns:`` read by
``sphinx.ext.napoleon``, both listed in ``_config.yml``). Public means: found
by :func:`pkgutil.iter_modules` in the package's folder, name not starting
with ``_``. A module added to ``src/dvae_tutorial`` is documented by the next
build with no edit anywhere; without this extension the comment line is just
a comment and the page lists nothing (``tests/test_appendices.py`` checks the
extension against the package).
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from sphinx.application import Sphinx

#: The marker line the page carries; group 1 is the package to document.
MARKER = re.compile(r"^% package-modules: *([\w.]+) *$", re.MULTILINE)


def public_modules(package: str) -> list[str]:
    """Dotted names of the package's public modules, sorted."""
    pkg = importlib.import_module(package)
    return sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_"))


def summary(module: str) -> str:
    """The first sentence line of a module's docstring, for the table."""
    doc = importlib.import_module(module).__doc__ or ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split()).replace("|", "\\|")


def module_markdown(package: str) -> str:
    """The Markdown that replaces the marker: a table, then one section per module."""
    names = public_modules(package)
    out = [f"{len(names)} modules, in alphabetical order.", "",
           "| module | what it is |", "|---|---|"]
    out += [f"| `{name.rsplit('.', 1)[1]}` | {summary(name)} |" for name in names]
    for name in names:
        # eval-rst: autodoc writes reStructuredText, which MyST would read as
        # Markdown (the directives would show as raw text)
        out += ["", f"## `{name.rsplit('.', 1)[1]}`", "", "```{eval-rst}",
                f".. automodule:: {name}", "   :members:", "```"]
    return "\n".join(out) + "\n"


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if MARKER.search(source[0]):
        _pages(app.env).add(docname)
        source[0] = MARKER.sub(lambda m: module_markdown(m.group(1)), source[0])


def _pages(env) -> set[str]:
    """The documents that carry the marker (kept in the build environment)."""
    if not hasattr(env, "package_reference_pages"):
        env.package_reference_pages = set()
    return env.package_reference_pages


def _outdated(app: Sphinx, env, added, changed, removed) -> list[str]:
    """Read those pages again on every build: the package may have new modules
    or new docstrings although the page's own source did not change."""
    return sorted(_pages(env) - set(removed))


def _merge(app: Sphinx, env, docnames, other) -> None:
    _pages(env).update(_pages(other))


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("source-read", _source_read)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-merge-info", _merge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
