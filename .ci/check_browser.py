"""Open every page of the built book in headless Chromium and check what a reader sees.

    python .ci/check_browser.py                     # the pages of _toc.yml in _build/html
    python .ci/check_browser.py --html DIR [PAGE…]  # another folder (all its pages, or PAGE…)

Pages are opened from disk (file://), as an offline reader opens them, with every
http(s)/ws request refused by the browser: the book must not need the network.
A page fails, one line per problem, on
  - raw TeX left on the page after MathJax ran (``$$``, ``\\(``, ``\\[``,
    ``\\begin{``, ``$…\\cmd…$`` in text outside code), a math element MathJax did
    not process, or math that MathJax rendered as an error / undefined macro;
  - a broken image (naturalWidth 0 after loading, or a missing local file);
  - a broken internal link (a local file that does not exist, or an ``#anchor``
    that is not an id on the target page);
  - a JavaScript exception, a console error, a failed resource load, or a
    request to the network;
  - with ``--require SELECTOR`` (repeatable), no element matching it within
    PAGE_TIMEOUT (e.g. the slides of a reveal.js deck: ``.reveal.ready``,
    ``.reveal .slides section``). A link to ``#/…`` is a client-side route
    (reveal.js), not an anchor, and is not checked.
A screenshot of each page (the top, up to --max-height CSS pixels) is saved under
_build/screenshots/. Exit status: 0 all pages pass, 1 a problem, 2 no Chromium.

Chromium (Debian's ``chromium``) is driven with the DevTools protocol over
``--remote-debugging-pipe``: no websocket, no port, no Python dependency.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
PAGE_TIMEOUT = 90.0  # seconds for one page to load and typeset

# Runs in the page once it has loaded: waits for MathJax and the images, then
# reports what a reader would see. Returns a JSON-able object.
PAGE_JS = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const out = {rawTex: [], unprocessed: [], mathErrors: [], images: [], links: [],
               ids: [], mathjax: null};
  // MathJax 3: wait for the startup typesetting (and any typesetting queued after).
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; out.mathjax = MathJax.version || "3"; }
    catch (e) { out.mathErrors.push("MathJax startup failed: " + e); }
  } else if (document.querySelector('script[src*="mathjax" i], script[src*="MathJax"]')) {
    // A MathJax script tag that did not define MathJax: loading failed.
    out.mathjax = null;
  }
  // Images: load lazy ones too, then wait for every image to settle.
  const imgs = Array.from(document.images);
  imgs.forEach((im) => { if (im.loading === "lazy") im.loading = "eager"; });
  const deadline = Date.now() + 20000;
  while (imgs.some((im) => !im.complete) && Date.now() < deadline) await sleep(50);
  await sleep(200);  // late errors (fonts, scripts) reach the console
  for (const im of imgs) {
    out.images.push({src: im.currentSrc || im.src, attr: im.getAttribute("src") || "",
                     complete: im.complete, w: im.naturalWidth});
  }
  // Math elements Sphinx/MyST emit (span.math, div.math): each must hold MathJax output.
  for (const el of document.querySelectorAll(".math")) {
    if (el.closest("pre, code, .highlight")) continue;
    if (!el.querySelector("mjx-container")) {
      out.unprocessed.push(el.textContent.trim().slice(0, 80));
    }
  }
  // Math MathJax typeset as an error or with an undefined macro (shown in red).
  for (const c of document.querySelectorAll("mjx-container")) {
    const err = c.querySelector("mjx-merror, merror, [data-mjx-error]");
    const undef = Array.from(c.querySelectorAll('mtext[mathcolor="red"]'))
      .map((n) => n.textContent).filter((t) => t.startsWith("\\"));
    if (err) {
      out.mathErrors.push((err.getAttribute("data-mjx-error") || err.textContent || "error")
        .slice(0, 120));
    } else if (undef.length) {
      out.mathErrors.push("undefined macro " + undef.join(" "));
    }
  }
  // Raw TeX in the text a reader sees (code, scripts and MathJax output excluded).
  // (.math elements are judged above: typeset or not, not reported twice.)
  const skip = "script, style, noscript, textarea, pre, code, kbd, samp, " +
               "mjx-container, mjx-assistive-mml, .highlight, .MathJax, .math";
  const patterns = [
    [/\$\$/, "$$"], [/\\\(|\\\)/, "\\( \\)"], [/\\\[|\\\]/, "\\[ \\]"],
    [/\\(begin|end)\{/, "\\begin{…}"],
    [/\$[^$\n]*(\\[A-Za-z]+|[_^]\{?)[^$\n]*\$/, "$…$"],
  ];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const parent = n.parentElement;
    if (!parent || parent.closest(skip)) continue;
    const t = n.nodeValue;
    for (const [re, name] of patterns) {
      const m = t.match(re);
      if (m) {
        const i = Math.max(0, m.index - 30);
        out.rawTex.push(name + " in \u201c" + t.slice(i, m.index + 50).replace(/\s+/g, " ").trim() + "\u201d");
        break;
      }
    }
  }
  for (const a of document.querySelectorAll("a[href]")) {
    out.links.push({href: a.href, attr: a.getAttribute("href")});
  }
  for (const el of document.querySelectorAll("[id]")) out.ids.push(el.id);
  for (const el of document.querySelectorAll("a[name]")) out.ids.push(el.getAttribute("name"));
  return out;
})()
"""


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and (path := shutil.which(name)):
            return path
    return None


class Browser:
    """Headless Chromium driven with the DevTools protocol over a pipe (fds 3, 4)."""

    def __init__(self, chromium: str):
        self.profile = tempfile.mkdtemp(prefix="check_browser_")
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()
        # Move the child's ends above 4 so that dup2 onto 3 and 4 cannot clobber them.
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire_pipes():
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [
            chromium, "--headless", "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-default-apps", "--mute-audio",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            # Belt and braces with the request interception below: no name resolves.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, pass_fds=(3, 4), preexec_fn=wire_pipes,
        )
        os.close(child_r)
        os.close(child_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self.blocked: dict[str, list[str]] = {}  # sessionId -> refused URLs
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self._stderr.append(line.decode(errors="replace"))
            del self._stderr[:-50]

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome_r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                for q in list(self._replies.values()):
                    q.put({"error": {"message": "Chromium closed the pipe"}})
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    q = self._replies.pop(msg["id"], None)
                    if q is not None:
                        q.put(msg)
                elif msg.get("method") == "Fetch.requestPaused":
                    # A request to the network: refuse it, and remember it.
                    sid = msg.get("sessionId", "")
                    self.blocked.setdefault(sid, []).append(msg["params"]["request"]["url"])
                    self._send("Fetch.failRequest", {"requestId": msg["params"]["requestId"],
                                                     "errorReason": "BlockedByClient"}, sid)
                else:
                    self.events.put(msg)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> queue.Queue:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            q: queue.Queue = queue.Queue()
            self._replies[mid] = q
            msg = {"id": mid, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            os.write(self._to_chrome_w, json.dumps(msg).encode() + b"\0")
        return q

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = PAGE_TIMEOUT) -> dict:
        try:
            reply = self._send(method, params, session).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{method}: no answer from Chromium in {timeout:.0f} s") from None
        if "error" in reply:
            tail = "".join(self._stderr[-5:]).strip()
            raise RuntimeError(f"{method}: {reply['error'].get('message')} {tail}".strip())
        return reply.get("result", {})

    def close(self):
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v and (k == "id" or (k == "name" and tag == "a")):
                self.ids.add(v)


_ids_cache: dict[Path, set[str]] = {}


def ids_of(page: Path) -> set[str]:
    if page not in _ids_cache:
        parser = _Ids()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        _ids_cache[page] = parser.ids
    return _ids_cache[page]


def local_path(url: str) -> tuple[Path, str] | None:
    """(file, fragment) for a file:// URL; None for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path)), unquote(parts.fragment)


# Waits until each selector matches an element; returns {selector: count}.
REQUIRE_JS = r"""
(async (selectors, ms) => {
  const sleep = (t) => new Promise((r) => setTimeout(r, t));
  const deadline = Date.now() + ms;
  const count = () => Object.fromEntries(
    selectors.map((s) => [s, document.querySelectorAll(s).length]));
  while (Object.values(count()).some((n) => n === 0) && Date.now() < deadline) {
    await sleep(100);
  }
  return count();
})
"""


def check_page(browser: Browser, page: Path, shots: Path, name: str,
               max_height: int, require: Sequence[str] = ()) -> list[str]:
    problems: list[str] = []
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            browser.call(method, session=sid)
        browser.call("Fetch.enable", {"patterns": [{"urlPattern": p} for p in
                                                   ("http://*", "https://*", "ws://*", "wss://*")]},
                     session=sid)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                     session=sid)
        nav = browser.call("Page.navigate", {"url": page.as_uri()}, session=sid)
        if nav.get("errorText"):
            return [f"could not open: {nav['errorText']}"]
        loaded = False
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not loaded and time.monotonic() < deadline:
            try:
                ev = browser.events.get(timeout=1)
            except queue.Empty:
                continue
            if ev.get("sessionId") != sid:
                continue  # a closed tab's late event, or the browser's own
            loaded = ev["method"] == "Page.loadEventFired"
            problems += describe_event(ev)
        if not loaded:
            problems.append(f"no load event in {PAGE_TIMEOUT:.0f} s")
        res = browser.call("Runtime.evaluate", {"expression": PAGE_JS, "awaitPromise": True,
                                                "returnByValue": True}, session=sid)
        if "exceptionDetails" in res:
            problems.append("the check script failed: "
                            + res["exceptionDetails"].get("text", "") + " "
                            + str(res["exceptionDetails"].get("exception", {}).get("description", "")))
            found = {}
        else:
            found = res["result"]["value"]
        problems += judge(found, page)
        if require:
            res = browser.call("Runtime.evaluate", {
                "expression": f"{REQUIRE_JS}({json.dumps(list(require))}, 20000)",
                "awaitPromise": True, "returnByValue": True}, session=sid)
            counts = res.get("result", {}).get("value") or {}
            for sel in require:
                if not counts.get(sel):
                    problems.append(f"nothing on the page matches {sel!r}")
                else:
                    print(f"check_browser: {name}: {counts[sel]} × {sel}", file=sys.stderr)
        # Screenshot of the top of the page (whole page when shorter than max_height).
        metrics = browser.call("Page.getLayoutMetrics", session=sid)
        height = min(int(metrics["cssContentSize"]["height"]), max_height)
        shot = browser.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": max(height, 1), "scale": 1}},
            session=sid)
        shots.mkdir(parents=True, exist_ok=True)
        (shots / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
        # Events that arrived while the check ran (console errors, late exceptions).
        while True:
            try:
                ev = browser.events.get_nowait()
            except queue.Empty:
                break
            if ev.get("sessionId") == sid:
                problems += describe_event(ev)
        broken = {im["src"] for im in found.get("images", [])}
        problems = [p for p in problems if not (p.startswith("failed to load ")
                                                 and p.split(" ")[3] in broken)]
        problems += [f"request to the network: {u}" for u in browser.blocked.pop(sid, [])]
    finally:
        browser.call("Target.closeTarget", {"targetId": target})
    return list(dict.fromkeys(problems))  # unique, in order


def describe_event(ev: dict) -> list[str]:
    method, p = ev.get("method"), ev.get("params", {})
    if method == "Runtime.exceptionThrown":
        d = p["exceptionDetails"]
        text = d.get("exception", {}).get("description") or d.get("text", "")
        where = f" ({d.get('url', '')}:{d.get('lineNumber', 0) + 1})" if d.get("url") else ""
        return [f"JavaScript exception: {text.splitlines()[0] if text else '?'}{where}"]
    if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
        return [f"console {p['type']}: {args[:200]}"]
    if method == "Log.entryAdded" and p["entry"].get("level") == "error":
        e = p["entry"]
        if "ERR_BLOCKED_BY_CLIENT" in e.get("text", "") or e.get("source") == "network" \
                and e.get("url", "").startswith(("http:", "https:")):
            return []  # a refused network request: reported once, as such
        if e.get("source") == "network" and e.get("url"):
            # (dropped later when the URL is an image already reported as broken)
            return [f"failed to load {e['url']} ({e.get('text', '').split('::')[-1].strip()})"]
        return [f"console error ({e.get('source')}): {e.get('text', '')[:200]} {e.get('url', '')}".rstrip()]
    return []


def judge(found: dict, page: Path) -> list[str]:
    problems = []
    problems += [f"raw TeX on the page: {t}" for t in found.get("rawTex", [])]
    problems += ["math not typeset by MathJax: \u201c" + " ".join(t.split())[:80] + "\u201d"
                 for t in found.get("unprocessed", [])]
    problems += [f"MathJax error: {t}" for t in found.get("mathErrors", [])]
    for im in found.get("images", []):
        loc = local_path(im["src"])
        if loc and not loc[0].is_file():
            problems.append(f"broken image: {im['attr']} (no such file)")
        elif im["complete"] and im["w"] == 0:
            problems.append(f"broken image: {im['attr'][:120]} (did not decode)")
        elif not im["complete"]:
            problems.append(f"broken image: {im['attr'][:120]} (never finished loading)")
    ids = set(found.get("ids", []))
    for link in found.get("links", []):
        loc = local_path(link["href"])
        if loc is None:
            continue  # http(s), mailto, javascript: not internal
        target, frag = loc
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link: {link['attr']} (no such file)")
            continue
        if not frag or frag.startswith("/"):
            continue  # no fragment, or a client-side route such as reveal.js's #/3
        if target == page:
            known = ids
        elif target.suffix == ".html":
            known = ids_of(target)
        else:
            continue
        if frag not in known:
            problems.append(f"broken link: {link['attr']} (no #{frag} on {target.name})")
    return problems


def toc_pages(html: Path) -> list[Path]:
    import yaml  # the test extra has pyyaml; only needed for the book's own layout

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(items):
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections"))
            walk(item.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    # Sphinx's own pages a reader reaches from every page.
    return [html / f"{e}.html" for e in entries] + [html / "genindex.html", html / "search.html"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", type=Path, default=None,
                    help="folder of HTML (default: _build/html, pages from _toc.yml)")
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="where the PNGs go (default: _build/screenshots)")
    ap.add_argument("--max-height", type=int, default=6000,
                    help="screenshot height limit in CSS pixels")
    ap.add_argument("--require", action="append", default=[], metavar="SELECTOR",
                    help="a CSS selector every page must match (repeatable)")
    ap.add_argument("pages", nargs="*", help="pages relative to --html (default: all)")
    args = ap.parse_args(argv)

    html = (args.html or ROOT / "_build" / "html").resolve()
    shots = (args.screenshots or ROOT / "_build" / "screenshots").resolve()
    if args.pages:
        pages = [html / p for p in args.pages]
    elif (ROOT / "_toc.yml").exists() and (args.html is None or (html / "book").is_dir()):
        pages = toc_pages(html)
    else:
        pages = sorted(p for p in html.rglob("*.html")
                       if not {"_static", "_sources"} & set(p.relative_to(html).parts))
    chromium = find_chromium()
    if chromium is None:
        print("check_browser: no Chromium found (apt-get install chromium, or set CHROMIUM)",
              file=sys.stderr)
        return 2

    n_problems, start = 0, time.monotonic()
    browser = Browser(chromium)
    try:
        browser.call("Browser.getVersion", timeout=60)
        for page in pages:
            rel = page.relative_to(html).as_posix() if page.is_relative_to(html) else str(page)
            t0 = time.monotonic()
            if not page.is_file():
                problems = ["missing page"]
            else:
                name = rel.removesuffix(".html").replace("/", "__")
                try:
                    problems = check_page(browser, page, shots, name, args.max_height,
                                          args.require)
                except (TimeoutError, RuntimeError) as e:
                    problems = [f"the browser failed: {e}"]
            for p in problems:
                print(f"check_browser: {rel}: {p}", flush=True)
            n_problems += len(problems)
            print(f"check_browser:   {rel} {'ok' if not problems else 'FAILED'} "
                  f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    finally:
        browser.close()
    print(f"check_browser: {len(pages)} pages checked in {time.monotonic() - start:.0f} s, "
          f"{n_problems} problems; screenshots in {shots}")
    return 1 if n_problems else 0


if __name__ == "__main__":
    sys.exit(main())
