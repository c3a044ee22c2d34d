"""Fuzzer for issue 17: hostile ``.dvae`` files against the decoder.

For each model family (``single-845``, ``hier12-845`` by default) it writes
a few real files (crops of Kodak images), then decodes ``--cases`` mutated
files per family with :func:`dvae_tutorial.codec.decompress`, each in a
worker subprocess under a memory limit (``RLIMIT_AS``: what the worker had
after start-up plus ``--memory-gb``) and a time limit (``--timeout``
seconds; the parent kills a worker that overruns and starts a new one).
Prints ONE JSON object: per family and per mutation, how many cases ended
how:

- ``error``: the package's own one-line error (``DVAEError`` and its
  subclasses ``CodingError``, ``DataError``) — the expected outcome;
- ``identical``: decoded to the original file's pixels (the mutation did not
  change what the file says);
- ``crop``: a crafted header whose size differs from the original's but
  names the same latent grid (the ``size_in_grid`` edit): the decode is the
  original's decode cropped, or extended into the padding the encoder added
  — a self-consistent file, allowed;
- ``donor``: the streams of another valid file of the same size and model
  under this header (``splice_same_size``): a valid file of that image,
  decoded exactly to the donor's pixels — allowed (nothing in a file binds
  the streams to one image);
- failures: ``wrong_image`` (decoded to anything else), ``crash`` (any
  other exception), ``oom`` (an allocation failed), ``hang`` (over the time
  limit), ``died`` (the worker was killed by a signal).

Mutations: random (truncations, bit flips anywhere / in the header / in the
streams, inserted, deleted, overwritten, duplicated or swapped bytes,
garbage before or after, random bytes behind a valid magic) and crafted
(header fields edited with the header CRC recomputed: λ, image size —
including decompression bombs over the pixel budget with consistent latent
shapes —, sizes within the latent grid, model name, family, fingerprint,
latent shapes, stream count and lengths, streams spliced from another image
of another size, of the same size, or from another model).

Targets: 0 failures. ``--cases 10000`` per family is the acceptance run
(about 10 minutes on this 2-core machine); ``tests/test_fuzz.py`` runs a
seeded few hundred in CI.

Usage: ``python bench/fuzz.py [--cases N] [--family single hierarchical]
[--seed S] [--jobs J] [--timeout S] [--memory-gb G]`` (needs the Kodak
images: ``DVAE_DATA`` or the cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np

#: One shipped model per family (the issue's).
MODELS = {"single": "single-845", "hierarchical": "hier12-845"}
FAILURES = ("wrong_image", "crash", "oom", "hang", "died")
ALLOWED = ("error", "identical", "crop", "donor")
#: Special λ values a crafted header carries (besides random floats).
LAMBDAS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e30, 1e-30, 844.0]
#: (height, width) of decompression bombs, all over the default pixel budget.
BOMBS = [(16384, 16384), (1, 2**28), (2**28, 1), (2**16, 2**16), (5000, 4000),
         (2**31, 2**31)]
NAMES = ["../weights/single-845", "/etc/passwd", "..", "narrow/single-845-narrow",
         "x" * 255, "", "single-100", "single-300", "hier12-100", "hier3-845",
         "SINGLE-845", "single-845\x00"]


# --- the files and the mutations (run in the worker) -------------------------

class Files:
    """The real files a family's mutations start from."""

    def __init__(self, family: str) -> None:
        from dvae_tutorial import codec
        from dvae_tutorial.data import kodak_images

        images = list(kodak_images())
        self.codec, self.name = codec, MODELS[family]
        crops = [images[4][:64, :96], images[12][100:164, 200:296],
                 images[20][:80, :112]]
        self.files = [codec.compress(c, self.name).data for c in crops]
        self.decoded = [codec.decompress(f) for f in self.files]
        other = "single-300" if family == "single" else "hier12-300"
        self.other_model = codec.compress(crops[0], other).data

    def header(self, data: bytes):
        return self.codec.bitstream.unpack(data)

    def pack(self, header, streams) -> bytes:
        return self.codec.bitstream.pack(header, streams)

    def shapes(self, height: int, width: int):
        model = self.codec.load_shipped(self.name)
        return tuple(tuple(s) for s in model.stream_shapes((height, width)))


def _flip(data: bytes, rng, lo: int, hi: int, bits: int) -> bytes:
    out = bytearray(data)
    for _ in range(bits):
        pos = int(rng.integers(lo, max(lo + 1, hi)))
        if pos < len(out):
            out[pos] ^= 1 << int(rng.integers(8))
    return bytes(out)


def _header_size(files: Files, data: bytes) -> int:
    return files.codec.bitstream.unpack_header(data)[1]


def _edit(files: Files, data: bytes, **fields) -> bytes:
    header, streams = files.header(data)
    return files.pack(dataclasses.replace(header, **fields), streams)


def _raw_name(files: Files, data: bytes, name: bytes) -> bytes:
    """The header with its name bytes replaced (any bytes; CRC recomputed)."""
    import struct
    import zlib

    size = _header_size(files, data)
    old_len = data[6]
    head = data[:6] + bytes([len(name)]) + name + data[7 + old_len:size - 4]
    return head + struct.pack("<I", zlib.crc32(head)) + data[size:]


def mutate(files: Files, kind: str, rng) -> tuple[bytes, str]:
    """A mutated file and what a correct decode may give besides an error
    (``"same"``, ``"crop"`` or ``"donor"``)."""
    base = files.files[0]
    n, hsize = len(base), _header_size(files, base)
    header, streams = files.header(base)
    if kind == "truncate":
        return base[:int(rng.integers(n))], "same"
    if kind == "flip_any":
        return _flip(base, rng, 0, n, int(rng.integers(1, 9))), "same"
    if kind == "flip_header":
        return _flip(base, rng, 0, hsize, int(rng.integers(1, 4))), "same"
    if kind == "flip_streams":
        return _flip(base, rng, hsize, n, int(rng.integers(1, 9))), "same"
    if kind == "insert":
        pos = int(rng.integers(n + 1))
        return base[:pos] + rng.bytes(int(rng.integers(1, 17))) + base[pos:], "same"
    if kind == "delete":
        pos = int(rng.integers(n))
        return base[:pos] + base[pos + int(rng.integers(1, 17)):], "same"
    if kind == "overwrite":
        pos, k = int(rng.integers(n)), int(rng.integers(1, 65))
        return (base[:pos] + rng.bytes(k) + base[pos + k:])[:n], "same"
    if kind == "duplicate":
        pos, k = int(rng.integers(n)), int(rng.integers(1, 33))
        return base[:pos] + base[pos:pos + k] + base[pos:], "same"
    if kind == "swap_bytes":
        out = bytearray(base)
        i, j = rng.integers(n, size=2)
        out[i], out[j] = out[j], out[i]
        return bytes(out), "same"
    if kind == "garbage_after":
        return base + rng.bytes(int(rng.integers(1, 1000))), "same"
    if kind == "garbage_before":
        return rng.bytes(int(rng.integers(1, 64))) + base, "same"
    if kind == "random_behind_magic":
        return b"DVAE\x01" + rng.bytes(int(rng.integers(0, 2000))), "same"
    if kind == "lmbda":
        value = (LAMBDAS[int(rng.integers(len(LAMBDAS)))] if rng.random() < 0.6
                 else float(rng.normal(0, 1e3)))
        return _edit(files, base, lmbda=value), "same"
    if kind == "bomb":
        h, w = BOMBS[int(rng.integers(len(BOMBS)))]
        h, w = min(h, 2**32 - 1), min(w, 2**32 - 1)
        try:
            shapes = files.shapes(h, w)
        except Exception:  # noqa: BLE001 — a shape past the varint range
            shapes = header.shapes
        shapes = tuple(tuple(min(d, 2**32 - 1) for d in s) for s in shapes)
        return _edit(files, base, height=h, width=w, shapes=shapes), "same"
    if kind == "size_in_grid":  # another size, the same latent grid: a crop
        h = int(rng.integers(max(1, header.height - 15), header.height + 16))
        w = int(rng.integers(max(1, header.width - 15), header.width + 16))
        if files.shapes(h, w) != header.shapes:
            h, w = header.height, header.width
        return _edit(files, base, height=h, width=w), "crop"
    if kind == "size_consistent":  # another grid, shapes to match: wrong stream
        h = max(1, header.height + int(rng.integers(-48, 200)))
        w = max(1, header.width + int(rng.integers(-48, 200)))
        return _edit(files, base, height=h, width=w, shapes=files.shapes(h, w)), "crop"
    if kind == "size_zero":
        return _edit(files, base, height=int(rng.integers(2)) * header.height,
                     width=0), "same"
    if kind == "name":
        name = NAMES[int(rng.integers(len(NAMES)))]
        if rng.random() < 0.3:
            name = "".join(chr(int(c)) for c in rng.integers(1, 256, int(
                rng.integers(1, 40))))
        return _raw_name(files, base, name.encode("latin-1")[:255]), "same"
    if kind == "family":
        other = "hierarchical" if header.family == "single" else "single"
        return _edit(files, base, family=other), "same"
    if kind == "fingerprint":
        return _edit(files, base, fingerprint=_flip(header.fingerprint, rng, 0, 8, 1)), \
            "same"
    if kind == "shapes":
        shape = list(header.shapes[0])
        i = int(rng.integers(len(shape)))
        shape[i] = max(0, shape[i] + int(rng.choice([-2, -1, 1, 2, 1000, 2**20])))
        if rng.random() < 0.2:
            shape = shape + [1]
        return _edit(files, base, shapes=(tuple(shape),) + header.shapes[1:]), "same"
    if kind == "stream_count":
        more = streams + [streams[-1]] if rng.random() < 0.5 else streams[:-1]
        if not more:
            more = [b""]
        shapes = (header.shapes * len(more))[:len(more)]
        return files.pack(dataclasses.replace(header, shapes=shapes), more), "same"
    if kind == "stream_split":  # the same bytes, the boundary between streams moved
        joined, cut = b"".join(streams), int(rng.integers(1, 64))
        parts = [joined[:cut], joined[cut:]]
        return files.pack(dataclasses.replace(header, shapes=(header.shapes * 2)[:2]),
                          parts), "same"
    if kind == "splice_other_size":
        _, donor = files.header(files.files[2])
        return files.pack(header, donor), "same"
    if kind == "splice_same_size":
        _, donor = files.header(files.files[1])
        return files.pack(header, donor), "donor"
    if kind == "splice_other_model":
        _, donor = files.header(files.other_model)
        return files.pack(header, donor), "same"
    raise ValueError(kind)


KINDS = ["truncate", "flip_any", "flip_header", "flip_streams", "insert", "delete",
         "overwrite", "duplicate", "swap_bytes", "garbage_after", "garbage_before",
         "random_behind_magic", "lmbda", "bomb", "size_in_grid", "size_consistent",
         "size_zero", "name", "family", "fingerprint", "shapes", "stream_count",
         "stream_split", "splice_other_size", "splice_same_size", "splice_other_model"]


def classify(files: Files, data: bytes, allowed: str) -> str:
    from dvae_tutorial.errors import DVAEError

    try:
        pixels = files.codec.decompress(data)
    except DVAEError as err:
        return "error" if "\n" not in str(err) else "crash"
    except MemoryError:
        return "oom"
    except RuntimeError as err:
        return "oom" if "allocate" in str(err) or "memory" in str(err) else "crash"
    except Exception:  # noqa: BLE001 — every other exception is a finding
        return "crash"
    ref = files.decoded[0]
    if pixels.shape == ref.shape and np.array_equal(pixels, ref):
        return "identical"
    if allowed == "donor" and np.array_equal(pixels, files.decoded[1]):
        return "donor"
    if allowed == "crop":
        h, w = min(pixels.shape[0], ref.shape[0]), min(pixels.shape[1], ref.shape[1])
        if np.array_equal(pixels[:h, :w], ref[:h, :w]):
            return "crop"
    return "wrong_image"


def worker(family: str, seed: int, memory_gb: float) -> None:
    """Read case numbers on stdin, answer ``number kind outcome`` on stdout."""
    import resource

    files = Files(family)
    with open("/proc/self/status") as status:
        vm = next(int(ln.split()[1]) for ln in status if ln.startswith("VmSize"))
    limit = vm * 1024 + int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print("READY", flush=True)
    for line in sys.stdin:
        case = int(line)
        rng = np.random.default_rng([seed, case])
        kind = KINDS[case % len(KINDS)]
        try:
            data, allowed = mutate(files, kind, rng)
        except Exception as err:  # noqa: BLE001 — a mutation that cannot be built
            print(case, kind, "skipped", type(err).__name__, flush=True)
            continue
        print(case, kind, classify(files, data, allowed), flush=True)


# --- the parent ----------------------------------------------------------------

class Worker:
    def __init__(self, family: str, seed: int, memory_gb: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", family, "--seed", str(seed),
             "--memory-gb", str(memory_gb)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1,
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        if self.proc.stdout.readline().strip() != "READY":
            raise SystemExit(f"the {family} worker did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()
            self.proc.wait()


def fuzz(family: str, cases: int, seed: int, jobs: int, timeout: float,
         memory_gb: float) -> dict:
    table: dict[str, Counter] = defaultdict(Counter)
    workers = [Worker(family, seed, memory_gb) for _ in range(jobs)]
    pending = list(range(cases))
    start = time.perf_counter()
    try:
        while pending:  # round-robin, one case at a time per worker
            batch, pending = pending[:jobs], pending[jobs:]
            for i, case in enumerate(batch):
                workers[i].proc.stdin.write(f"{case}\n")
                workers[i].proc.stdin.flush()
            for i, case in enumerate(batch):
                kind, outcome = _answer(workers[i], case, timeout)
                table[kind][outcome] += 1
                if not workers[i].alive():
                    workers[i] = Worker(family, seed, memory_gb)
    finally:
        for w in workers:
            w.close()
    totals = Counter()
    for counts in table.values():
        totals.update(counts)
    return {"model": MODELS[family], "cases": cases,
            "seconds": round(time.perf_counter() - start, 1),
            "outcomes": dict(totals),
            "failures": sum(totals[f] for f in FAILURES),
            "by_mutation": {k: dict(v) for k, v in sorted(table.items())}}


def _answer(worker: Worker, case: int, timeout: float) -> tuple[str, str]:
    ready, _, _ = select.select([worker.proc.stdout], [], [], timeout)
    kind = KINDS[case % len(KINDS)]
    if not ready:
        worker.proc.kill()
        worker.proc.wait()
        return kind, "hang"
    line = worker.proc.stdout.readline().split()
    if len(line) < 3:
        worker.proc.wait()
        return kind, "died"
    return line[1], line[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="per family")
    parser.add_argument("--family", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a case")
    parser.add_argument("--memory-gb", type=float, default=3.0,
                        help="memory a worker may allocate beyond its start-up")
    parser.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seed, args.memory_gb)
        return
    results = {family: fuzz(family, args.cases, args.seed, args.jobs, args.timeout,
                            args.memory_gb) for family in args.family}
    print(json.dumps({
        "bench": "fuzz", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": args.seed,
        "timeout_s": args.timeout, "memory_gb": args.memory_gb,
        "families": results,
        "allowed_outcomes": list(ALLOWED), "failure_outcomes": list(FAILURES),
        "target_met": all(r["failures"] == 0 for r in results.values()),
    }, indent=1))


if __name__ == "__main__":
    main()
