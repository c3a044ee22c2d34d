"""The ``dvae data`` command: where each dataset comes from, fetch and verify.

A thin layer over :mod:`dvae_tutorial.data` (backs the book's appendix on the
``dvae`` command). Each subcommand prints its result and returns an exit
status; the package's errors become one line on stderr in :mod:`.cli`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .data import (
    COCO_ZIPS,
    ENV_CACHE,
    ENV_DATA,
    ENV_OFFLINE,
    cache_dir,
    coco_dir,
    image_files,
    kodak_dir,
    mirror_dir,
    offline,
    train_dir,
    val_dir,
)
from .errors import ChecksumError, DataError


def _origin(folder: Path) -> str:
    mirror = mirror_dir()
    return "mirror" if mirror and folder.is_relative_to(mirror) else "cache"


def _cli_status(args: argparse.Namespace) -> int:
    cache = "from " + ENV_CACHE if os.environ.get(ENV_CACHE) else "default"
    network = "forbidden" if offline() else "allowed"
    print(f"{ENV_DATA:<10} {mirror_dir() or '(unset)'}")
    print(f"{'cache':<10} {cache_dir()}  ({cache})")
    print(f"{'network':<10} {network}  ({ENV_OFFLINE}=1 forbids downloads)")
    try:
        folder = kodak_dir(download=False)
        print(f"{'kodak':<10} 24/24 verified in {folder} ({_origin(folder)})")
    except ChecksumError as err:
        print(f"{'kodak':<10} WRONG FILE: {err}")
    except DataError:
        print(f"{'kodak':<10} missing  (`dvae data kodak` fetches it)")
    for split, find in (("train", train_dir), ("val", val_dir)):
        try:
            folder = find()
            count = len(image_files(folder))
            print(f"{split:<10} {count} images in {folder} ({_origin(folder)})")
        except DataError:
            print(f"{split:<10} missing  (set {ENV_DATA}, or "
                  f"`dvae data coco --split {split}`)")
    return 0


def _cli_kodak(args: argparse.Namespace) -> int:
    print(kodak_dir(download=True))
    return 0


def _cli_coco(args: argparse.Namespace) -> int:
    print(coco_dir(args.split, download=True))
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``dvae data {status,kodak,coco}`` to the ``dvae`` command's subparsers."""
    parser = sub.add_parser(
        "data", help="find, download and verify the datasets",
        description=f"Datasets come from the mirror folder ${ENV_DATA} (kodak/, "
        f"train/, val/), then the cache (${ENV_CACHE} or a default), then a "
        f"download unless {ENV_OFFLINE}=1.")
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    data_sub.add_parser(
        "status", help="show where each dataset comes from and whether it is there"
    ).set_defaults(func=_cli_status)
    data_sub.add_parser(
        "kodak", help="fetch (if needed) and verify the 24 Kodak images; print "
        "their folder").set_defaults(func=_cli_kodak)
    coco = data_sub.add_parser(
        "coco", help="download and unpack COCO 2017 images into the cache; print "
        "their folder")
    coco.add_argument("--split", choices=sorted(COCO_ZIPS), default="val",
                      help="val: 5,000 images, 0.8 GB (default); "
                      "train: 118,287 images, 19.3 GB")
    coco.set_defaults(func=_cli_coco)
