#!/usr/bin/env bash
# Colab's widgets: a fresh venv with Colab's ipywidgets 7.x installs the package
# without upgrading ipywidgets (or torch), and the chapters that build widgets
# execute there.
#
#   bash .ci/check_colab_widgets.sh                  # every chapter that imports ipywidgets
#   bash .ci/check_colab_widgets.sh book/03_….ipynb  # only these chapters (.ci/run: chapter 3)
#
# Colab ships ipywidgets 7.7.1 and its own torch; a reader's first cell runs
# `pip install dvae-tutorial@git+…`. This script builds that situation offline:
#  1. a new venv gets what Colab has preinstalled: torch and torchvision, linked
#     read-only from the calling Python (the project's .venv; pip sees them as
#     installed and never changes them, as with Colab's system packages) or, when
#     that Python has no torch, installed from $TORCH/$TORCHVISION; then
#     ipywidgets==7.7.1, ipykernel and nbclient;
#  2. `pip install -e .`; the check fails if ipywidgets or torch changed;
#  3. each widget chapter is executed with nbclient (CI=true, as in .ci/run); in
#     the kernel ipywidgets must be 7.x and the widgets must have been displayed
#     (widget-view outputs of protocol 2, which ipywidgets 7 writes).
# Needs DVAE_DATA (or ../shared/data beside the clone). Prints its run time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fail() { echo "COLAB WIDGETS CHECK FAILED: $*" >&2; exit 1; }
quiet_pip() { grep -v -e "^WARNING: Location 'file:" -e "^\[notice\]" || true; }

COLAB_IPYWIDGETS="${COLAB_IPYWIDGETS:-7.7.1}"
TORCH="${TORCH:-torch==2.14.1}"
TORCHVISION="${TORCHVISION:-torchvision==0.29.1}"
HOST_PYTHON="${HOST_PYTHON:-python3}"
export CI=true DVAE_OFFLINE=1
if [ -z "${DVAE_DATA:-}" ]; then
  [ -d ../shared/data ] || fail "no dataset mirror: set DVAE_DATA or put shared/ beside the clone"
  DVAE_DATA="$(cd ../shared/data && pwd)"
  export DVAE_DATA
fi
start=$(date +%s)
venv="$(mktemp -d "${TMPDIR:-/tmp}/dvae-colab-widgets.XXXXXX")"
trap 'rm -rf "$venv"' EXIT

echo "== a fresh venv with Colab's preinstalled torch and ipywidgets $COLAB_IPYWIDGETS ($venv)"
python3 -m venv "$venv/env" || fail "could not create a venv"
py="$venv/env/bin/python"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ver='import sys; print(sys.version_info[:2])'
if "$HOST_PYTHON" -c 'import torch, torchvision' 2>/dev/null \
    && [ "$("$HOST_PYTHON" -c "$ver")" = "$("$py" -c "$ver")" ]; then
  # Link torch, torchvision and what they need (numpy, nvidia libraries, …) from
  # the calling Python into a folder the venv reads through a .pth file.
  "$HOST_PYTHON" - "$venv/preinstalled" <<'EOF' || fail "could not link torch"
import importlib.metadata as md
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir()
seen, todo = {}, ["torch", "torchvision"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue  # an optional or platform-specific requirement that is not installed
    seen[name] = dist
    todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in dist.requires or []
             if "extra ==" not in r]
for dist in seen.values():
    base = Path(dist.locate_file(""))
    for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
        if not (out / top).exists() and (base / top).exists():
            (out / top).symlink_to(base / top)
print(f"   linked {len(seen)} distributions from {base}: " + ", ".join(
    f"{d.metadata['Name']} {d.version}" for d in seen.values()
    if d.metadata["Name"].lower().startswith("torch")))
EOF
  echo "$venv/preinstalled" > "$site/colab_preinstalled.pth"
else
  echo "   ($HOST_PYTHON has no torch: installing $TORCH $TORCHVISION)"
  "$py" -m pip install -q "$TORCH" "$TORCHVISION" 2>&1 | quiet_pip || fail "could not install torch"
fi
"$py" -m pip install -q "ipywidgets==$COLAB_IPYWIDGETS" nbclient ipykernel 2>&1 | quiet_pip \
  || fail "could not install ipywidgets==$COLAB_IPYWIDGETS"
before="$("$py" -c 'import ipywidgets, torch; print(ipywidgets.__version__, torch.__version__)')" \
  || fail "Colab's preinstalled packages did not install"
echo "   before: ipywidgets torch = $before ($(( $(date +%s) - start )) s)"

echo "== pip install -e . (what the chapters' first cell does in Colab)"
"$py" -m pip install -q -e . 2>&1 | quiet_pip || fail "pip install -e . failed next to ipywidgets $COLAB_IPYWIDGETS"
after="$("$py" -c 'import ipywidgets, torch, dvae_tutorial; print(ipywidgets.__version__, torch.__version__)')" \
  || fail "pip install -e . failed next to ipywidgets $COLAB_IPYWIDGETS"
echo "   after:  ipywidgets torch = $after"
[ "$before" = "$after" ] || fail "installing the package changed ipywidgets/torch: $before -> $after"
case "$after" in 7.*) ;; *) fail "ipywidgets is not 7.x: $after" ;; esac
echo "   installed in $(( $(date +%s) - start )) s"

echo "== the widget chapters, executed with ipywidgets $COLAB_IPYWIDGETS"
"$py" - "$@" <<'EOF' || fail "a widget chapter did not execute with ipywidgets 7"
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

chapters = [Path(p) for p in sys.argv[1:]] or sorted(
    p for p in Path("book").glob("*.ipynb") if "import ipywidgets" in p.read_text("utf-8"))
assert chapters, "no chapter imports ipywidgets"
probe = nbformat.v4.new_code_cell(
    "import ipywidgets, sys\n"
    "assert ipywidgets.__version__.startswith('7.'), ipywidgets.__version__\n"
    f"assert sys.prefix == {sys.prefix!r}, sys.prefix\n"
    "print('kernel ipywidgets', ipywidgets.__version__)")
for path in chapters:
    t0 = time.time()
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(probe)  # in memory only: the chapter file is not changed
    NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, f"{path}: no widget was displayed"
    majors = {v.get("version_major") for v in views}
    assert majors == {2}, f"{path}: widget protocol {majors}, ipywidgets 7 writes 2"
    print(f"   {path}: {len(views)} widget(s), protocol 2 (ipywidgets 7), "
          f"executed in {time.time() - t0:.0f} s", flush=True)
EOF
echo "== Colab widgets check passed in $(( $(date +%s) - start )) s"
