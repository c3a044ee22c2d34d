"""``dvae models``, ``dvae compress``, ``dvae decompress`` and ``dvae evaluate``.

Thin layers over :mod:`dvae_tutorial.codec`, :mod:`dvae_tutorial.evaluation`
and :mod:`dvae_tutorial.cost` (backs *Results*, *A discretized VAE codec* and the
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

    infos = shipped_models(args.family)
    if not args.cost:
        for info in infos:
            print(f"{info.name} {info.family} {info.lmbda_text}")
        return 0
    from .cost import shipped_cost

    print("NAME FAMILY LMBDA PARAMS MB ENC_KMAC/PX DEC_KMAC/PX")
    texts = {info.name: info.lmbda_text for info in infos}
    for row in shipped_cost([info.name for info in infos]):
        print(f"{row['model']} {row['family']} {texts[row['model']]} {row['parameters']} "
              f"{row['total_mb']:.2f} {row['encode_kmac_per_pixel']:.1f} "
              f"{row['decode_kmac_per_pixel']:.1f}")
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
    from .codec import check_lmbda, check_out_dir, compress_file

    _check_stems(args.images, "compress")
    check_out_dir(args.out_dir)
    # an unknown name, or a λ the model does not code at, fails once, before any file
    lmbda = check_lmbda(args.model, args.lmbda)

    def work(path: str) -> str:
        target, enc = compress_file(path, args.out_dir, args.model, force=args.force,
                                    max_pixels=_max_pixels(args), lmbda=lmbda)
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
    from .evaluation import check_codec, evaluation_report, folder_images

    codecs = ["jpeg"] + [c for c in args.codec if c != "jpeg"]
    for name in codecs:
        check_codec(name)  # AVIF without libavif: one line, before any work
    names = args.model or [i.name for i in shipped_models(args.family)]
    if not names:
        raise DVAEError("no models to evaluate (`dvae models` lists the shipped ones)")
    if args.lmbda:
        from .codec import check_lmbda

        variable = [i.name for i in shipped_models("variable-rate") if i.name in names]
        if not variable:
            raise DVAEError("--lmbda sweeps a variable-rate model; none is among "
                            "the models evaluated")
        for lmbda in args.lmbda:
            check_lmbda(variable[0], lmbda)
    if args.images is not None:
        images, labels = folder_images(args.images, args.limit)
        dataset = f"{Path(args.images).resolve().name} ({len(images)} images, native size)"
    else:
        from .data import kodak_images

        images = list(kodak_images())[: args.limit]
        labels = [f"kodim{i + 1:02d}" for i in range(len(images))]
        dataset = f"Kodak ({len(images)} images)"
    report = evaluation_report(images, labels, dataset, names, codecs, cost=args.cost,
                               progress=lambda line: print(line, file=sys.stderr),
                               lmbdas=args.lmbda or None)
    for title, key in (("BD-rate", "bd_rate_percent"),
                       ("BD-rate (MS-SSIM)", "bd_rate_ms_ssim_percent")):
        for series, row in report[key].items():
            print(f"{series}: {title} " + ", ".join(
                f"{k.replace('_', ' ')} " + ("n/a" if v is None else f"{v:+.1f} %")
                for k, v in row.items()), file=sys.stderr)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return 0


def _codec_list(text: str) -> list[str]:
    """``--codec`` value: one codec or a comma list (``jpeg,webp``)."""
    from .evaluation import CODEC_QUALITIES  # no torch import

    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in CODEC_QUALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown codec {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(CODEC_QUALITIES)}")
    return names


def _lmbda_list(text: str) -> list[float]:
    """``--lmbda`` of ``dvae evaluate``: one λ or a comma list (``100,300``)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a λ or a comma list of λ: "
                                         f"{text!r}") from None


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
    p.add_argument("--family", choices=sorted(FAMILIES),
                   help="list only the models of this family")
    p.add_argument("--cost", action="store_true", help="add columns PARAMS, MB "
                   "(checkpoint files, with the transforms a prior shares), and "
                   "thousands of multiply-accumulates per pixel to encode and to "
                   "decode a Kodak-sized image as the codec runs them "
                   "(torch.utils.flop_counter: convolutions and matrix products; "
                   "element-wise work and the entropy coder are not counted)")
    p.set_defaults(func=_cli_models)

    p = sub.add_parser("compress", help="compress images to .dvae files",
                       description="Compress PNG/JPEG images (RGB, gray, RGBA, "
                       "16-bit; up to --max-pixels) to DIR/<stem>.dvae with a shipped model.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to compress")
    p.add_argument("--model", required=True, help="a name from `dvae models`")
    p.add_argument("--lmbda", type=float, metavar="L",
                   help="variable-rate models: the λ to code at, inside the "
                   "model's range (`dvae models` prints it); recorded in the "
                   "file, so decompress needs no flag")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="folder for the .dvae files (created if missing)")
    _add_output_options(p)
    p.set_defaults(func=_cli_compress)

    p = sub.add_parser("decompress", help="decompress .dvae files to PNG",
                       description="Decode .dvae files to DIR/<stem>.png; the "
                       "model is read from each file's header.")
    p.add_argument("files", nargs="+", metavar="FILE", help=".dvae files to decode")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="folder for the .png files (created if missing)")
    p.add_argument("--layers", type=int, metavar="K",
                   help="progressive decoding (hierarchical models): decode only "
                   "the first K latent layers, the rest at their prior means")
    _add_output_options(p)
    p.set_defaults(func=_cli_decompress)

    p = sub.add_parser("evaluate", help="RD points of shipped models vs JPEG, "
                       "WebP, AVIF (Kodak, or a folder)",
                       description="Compress and decompress the Kodak images (or "
                       "every image of --images DIR, native size) with shipped "
                       "models through real files; mean bpp (file bytes), "
                       "−Σlog₂P, 8-bit PSNR, MS-SSIM (pytorch-msssim; images "
                       "with a side under 161 px have none); Pillow sweeps of "
                       "JPEG and the --codec ones on the same images; BD-rate "
                       "per series on PSNR and on MS-SSIM in dB, overall and "
                       "per image (cubic Bjøntegaard, log-rate, overlapping "
                       "quality range only).")
    p.add_argument("--model", action="append", help="model name (repeatable; "
                   "default: every shipped model, or of --family)")
    p.add_argument("--family", choices=sorted(FAMILIES),
                   help="only this family's shipped models (default: all; BD-rates "
                   "are per series, e.g. single, hier3, hier12)")
    p.add_argument("--codec", type=_codec_list, action="extend", default=[],
                   metavar="CODEC", help="also measure these Pillow codecs: jpeg, "
                   "webp, avif (repeatable or a comma list; AVIF only where "
                   "Pillow writes it). JPEG is always measured: it is the "
                   "reference of every BD-rate vs JPEG")
    p.add_argument("--images", metavar="DIR", help="evaluate on every image under "
                   "DIR (recursive, sorted, native size) instead of Kodak")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="only the first N images (Kodak, or of --images)")
    p.add_argument("--cost", action="store_true", help="add the models' cost "
                   "(parameters, bytes, kMAC/pixel; as `dvae models --cost`) "
                   "to the report")
    p.add_argument("--lmbda", type=_lmbda_list, action="extend", metavar="L",
                   help="variable-rate models: evaluate at these λ (repeatable or "
                   "a comma list; default: its levels and the geometric middles "
                   "between them), one series <name>-<λ>")
    p.add_argument("--json", metavar="PATH", help="write the report here, not stdout")
    p.set_defaults(func=_cli_evaluate)
