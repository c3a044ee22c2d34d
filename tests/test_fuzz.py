"""A seeded subset of the fuzzer (``bench/fuzz.py``, issue 17) in CI: every
mutation kind, both families, no crash, hang, out-of-memory or wrong image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MIRROR

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"


@pytest.mark.usefixtures("kodak")
def test_fuzzer_subset_finds_no_failure():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import fuzz
    finally:
        sys.path.remove(str(BENCH.parent))
    cases = 5 * len(fuzz.KINDS)  # five of each kind per family
    proc = subprocess.run([sys.executable, str(BENCH), "--cases", str(cases),
                           "--seed", "2026", "--jobs", "1", "--timeout", "60"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DVAE_DATA": str(MIRROR),
                               "DVAE_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    for family, result in report["families"].items():
        assert result["failures"] == 0, (family, result["by_mutation"])
        assert set(result["by_mutation"]) == set(fuzz.KINDS)
        assert set(result["outcomes"]) <= set(fuzz.ALLOWED), result["outcomes"]
        assert result["outcomes"]["error"] >= 0.8 * cases
        assert result["by_mutation"]["splice_same_size"] == {"donor": 5}
    assert report["target_met"]
