"""``dvae models``, ``dvae compress``, ``dvae decompress`` and ``dvae evaluate``.

Thin layers over :mod:`dvae_tutorial.codec` and
:mod:`dvae_tutorial.evaluation` (backs *A discretized VAE codec* and the
appendix on the ``dvae`` command). A bad input file is reported on one line
of stderr (``dvae compress: error: <file>: <problem>``); the other files are
still processed, and the exit status is 2 if any failed. An existing output
file is overwritten only with ``--force``, and never the file being read;
``--max-pixels`` raises the pixel budget (:data:`~dvae_tutorial.codec.MAX_PIXELS`).
A model is named from the shipped set only: neither ``--model`` nor a
file's header can make the command load another file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bitstream import FAMILIES
from .errors import DVAEError, one_line


def _cli_models(args: argparse.Namespace) -> int:
    from .codec import shipped_models

    for info in shipped_models(args.family):
        print(f"{info.name} {info.family} {info.lmbda:g}")
    return 0


def _check_stems(paths: list[str], command: str) -> None:
    stems: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if stem in stems and stems[stem] != path:
            raise DVAEError(f"{stems[stem]} and {path} would both be written as "
                            f"{stem}.*; {command} them into different --out-dir")
        stems[stem] = path


def _run_each(paths: list[str], command: str, work) -> int:
    failed = 0
    for path in paths:
        try:
            print(work(path))
        except DVAEError as err:  # compress_file/decompress_file name the file
            print(f"dvae {command}: error: {one_line(err)}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _cli_compress(args: argparse.Namespace) -> int:
    from .codec import check_out_dir, compress_file, load_shipped

    _check_stems(args.images, "compress")
    check_out_dir(args.out_dir)
    load_shipped(args.model)  # an unknown name fails once, before any file

    def work(path: str) -> str:
        target, enc = compress_file(path, args.out_dir, args.model, force=args.force,
                                    max_pixels=_max_pixels(args))
        return (f"{path} -> {target}: {len(enc.data)} bytes, {enc.bpp:.4f} bpp "
                f"(−Σlog₂P {enc.estimated_bpp:.4f} bpp), {enc.width}×{enc.height}")

    return _run_each(args.images, "compress", work)


def _cli_decompress(args: argparse.Namespace) -> int:
    from .codec import check_out_dir, decompress_file

    _check_stems(args.files, "decompress")
    check_out_dir(args.out_dir)

    def work(path: str) -> str:
        target, pixels = decompress_file(path, args.out_dir, args.layers,
                                         force=args.force,
                                         max_pixels=_max_pixels(args))
        part = "" if args.layers is None else f" (first {args.layers} latent layers)"
        return f"{path} -> {target}: {pixels.shape[1]}×{pixels.shape[0]}{part}"

    return _run_each(args.files, "decompress", work)


def _cli_evaluate(args: argparse.Namespace) -> int:
    from .codec import shipped_models
    from .data import kodak_images
    from .evaluation import evaluate_model, jpeg_curve, series_bd_rates

    names = args.model or [i.name for i in shipped_models(args.family)]
    if not names:
        raise DVAEError("no models to evaluate (`dvae models` lists the shipped ones)")
    images = list(kodak_images())[: args.limit]
    labels = [f"kodim{i + 1:02d}" for i in range(len(images))]
    jpeg = jpeg_curve(images)
    results = []
    for name in names:
        result = evaluate_model(name, images, labels)
        results.append(result)
        print(f"{name}: {result['bpp']:.4f} bpp (−Σlog₂P {result['estimated_bpp']:.4f},"
              f" +{result['overhead_percent']:.2f} %), {result['psnr']:.2f} dB, "
              f"encode {result['encode_s']:.2f} s, decode {result['decode_s']:.2f} s"
              " per image", file=sys.stderr)
    report = {"dataset": f"Kodak ({len(images)} images)", "jpeg": jpeg,
              "models": results, "bd_rate_percent": {}}
    report["bd_rate_percent"] = series_bd_rates(results, jpeg)
    for key, row in report["bd_rate_percent"].items():
        print(f"{key}: BD-rate " + ", ".join(f"{k.replace('_', ' ')} {v:+.1f} %"
                                              for k, v in row.items()), file=sys.stderr)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """``--force`` and ``--max-pixels``, shared by compress and decompress
    (the default budget is read when the command runs: importing the codec
    here would slow every ``dvae`` command down by torch's import)."""
    p.add_argument("--force", action="store_true", help="overwrite existing "
                   "output files (never the input file being read)")
    p.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="refuse images larger than N pixels, width × height "
                   "(default: codec.MAX_PIXELS, 16,777,216 = 4096×4096)")


def _max_pixels(args: argparse.Namespace) -> int:
    from .codec import MAX_PIXELS

    return MAX_PIXELS if args.max_pixels is None else args.max_pixels


def add_codec_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``models``, ``compress``, ``decompress`` and ``evaluate``."""
    p = sub.add_parser("models", help="list the shipped models: NAME FAMILY LMBDA")
    p.add_argument("--family", choices=sorted(FAMILIES))
    p.set_defaults(func=_cli_models)

    p = sub.add_parser("compress", help="compress images to .dvae files",
                       description="Compress PNG/JPEG images (RGB, gray, RGBA, "
                       "16-bit; up to --max-pixels) to DIR/<stem>.dvae with a shipped model.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="a name from `dvae models`")
    p.add_argument("--out-dir", required=True, metavar="DIR")
    _add_output_options(p)
    p.set_defaults(func=_cli_compress)

    p = sub.add_parser("decompress", help="decompress .dvae files to PNG",
                       description="Decode .dvae files to DIR/<stem>.png; the "
                       "model is read from each file's header.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out-dir", required=True, metavar="DIR")
    p.add_argument("--layers", type=int, metavar="K",
                   help="progressive decoding (hierarchical models): decode only "
                   "the first K latent layers, the rest at their prior means")
    _add_output_options(p)
    p.set_defaults(func=_cli_decompress)

    p = sub.add_parser("evaluate", help="Kodak RD points of shipped models vs JPEG",
                       description="Compress and decompress the Kodak images with "
                       "shipped models through real files; mean bpp (file bytes), "
                       "−Σlog₂P, 8-bit PSNR; the Pillow JPEG sweep; BD-rate per series.")
    p.add_argument("--model", action="append", help="model name (repeatable; "
                   "default: every shipped model, or of --family)")
    p.add_argument("--family", choices=sorted(FAMILIES),
                   help="only this family's shipped models (default: all; BD-rates "
                   "are per series, e.g. single, hier3, hier12)")
    p.add_argument("--limit", type=int, help="only the first N Kodak images")
    p.add_argument("--json", metavar="PATH", help="write the report here, not stdout")
    p.set_defaults(func=_cli_evaluate)
