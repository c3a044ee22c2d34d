"""The browser check of the built book (.ci/check_browser.py) tells a good page from a bad one.

Two tiny sites are opened in headless Chromium: one whose math MathJax (the local
copy the book ships) typesets, with a working image and links, which must pass;
one with the MathJax script missing (so the TeX stays raw), a broken image, a
broken link, a JavaScript error and a request to the network, which must fail
with one line per problem.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "check_browser.py"

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium; "
                             ".ci/run installs it)")


def mathjax_es5() -> Path | None:
    spec = find_spec("mathjax")  # django-static-mathjax, in the book and test extras
    for root in (spec.submodule_search_locations or []) if spec else []:
        es5 = Path(root) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    return None


# What Sphinx + MyST emit for $…$, $$…$$ and \begin{align}, and the MathJax
# set-up of the built book (only elements with class "math" are processed).
HEAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title>
<script>window.MathJax = {"options": {"processHtmlClass":
  "tex2jax_process|mathjax_process|math|output_area"}}</script>
{mathjax}</head>"""
MATH = r"""
<p>Inline <span class="math notranslate nohighlight">\(\hat y = \operatorname{round}(y)\)</span>.</p>
<div class="math notranslate nohighlight">
\[\mathcal F = R + \lambda D\]</div>
<div class="amsmath math notranslate nohighlight" id="equation-1">\[\begin{align}
R &amp;= \mathbb E[-\log_2 \hat p(\hat y)] \\ D &amp;= \mathbb E\lVert x-\hat x\rVert^2
\end{align}\]</div>
"""
GOOD = (HEAD.replace("{mathjax}", '<script defer src="mathjax/tex-mml-chtml.js"></script>')
        + """<body><section class="tex2jax_ignore mathjax_ignore" id="top">""" + MATH
        + """<img src="dot.png" alt="a dot"> <a href="#equation-1">(1)</a>
<a href="other.html#there">there</a> <code>$$ code may show TeX $$</code>
</section></body></html>""")
OTHER = """<!DOCTYPE html><html><body><h1 id="there">There</h1></body></html>"""
BAD = (HEAD.replace("{mathjax}", "")  # the MathJax script is missing: nothing typesets
       + """<body><section class="tex2jax_ignore mathjax_ignore">""" + MATH
       + """<p>and $$ \\mathrm{KL}(q,|,\\hat p) $$ left by the Markdown parser</p>
<img src="missing.png" alt="gone"> <a href="nowhere.html">nowhere</a>
<a href="#no-such-anchor">anchor</a>
<script>undefinedFunction();</script>
<script src="https://cdn.example.invalid/lib.js"></script>
</section></body></html>""")


def run_check(html: Path, *pages: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK), "--html", str(html),
         "--screenshots", str(html / "shots"), *pages],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    es5 = mathjax_es5()
    if es5 is None:
        pytest.skip("django-static-mathjax is not installed (the test and book extras bring it)")
    from PIL import Image

    site = tmp_path_factory.mktemp("site")
    (site / "mathjax").symlink_to(es5, target_is_directory=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(site / "dot.png")
    (site / "good.html").write_text(GOOD, encoding="utf-8")
    (site / "other.html").write_text(OTHER, encoding="utf-8")
    (site / "bad.html").write_text(BAD, encoding="utf-8")
    return site


def test_rendered_math_passes(site):
    res = run_check(site, "good.html", "other.html")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 pages checked" in res.stdout and "0 problems" in res.stdout
    assert (site / "shots" / "good.png").stat().st_size > 1000


def test_unrendered_math_and_broken_image_fail(site):
    res = run_check(site, "bad.html")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("check_browser: bad.html:")]
    text = "\n".join(lines)
    assert "math not typeset by MathJax" in text  # the \( \) spans stay raw
    assert "raw TeX on the page: $$" in text  # $$ left in the prose
    assert "broken image: missing.png" in text
    assert "broken link: nowhere.html" in text
    assert "broken link: #no-such-anchor" in text
    assert "JavaScript exception" in text and "undefinedFunction" in text
    assert "request to the network: https://cdn.example.invalid/lib.js" in text
    assert (site / "shots" / "bad.png").exists()


def test_undefined_macro_fails(site):
    (site / "macro.html").write_text(
        GOOD.replace(r"\lambda D", r"\lambda \notamacro D"), encoding="utf-8")
    res = run_check(site, "macro.html")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "notamacro" in res.stdout
