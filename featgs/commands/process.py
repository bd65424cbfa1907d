"""``featgs process``: photos or a video -> a posed COLMAP dataset (structure from motion)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from featgs.configargs import add_config_arguments, config_from_args

DESCRIPTION = """\
Find the camera poses of a folder of photos or of a video by structure from motion (COLMAP,
through pycolmap: SIFT features, matching, incremental mapping; on the CPU unless pycolmap
has CUDA), undistort the images to pinhole cameras and write a COLMAP dataset folder that
`featgs train` reads:

  DATA/images/            registered images, undistorted, at most --max-size px
  DATA/images_2/ _4/ _8/  the same at 1/2, 1/4, 1/8 size (used by train --downscale 2|4|8)
  DATA/sparse/0/          the COLMAP model (PINHOLE cameras, poses, 3D points)
  DATA/process.json       this summary and the options used
  DATA/labels/ labels.json  the label maps, when INPUT has them (below)

INPUT is a folder of photos (JPEG, PNG, HEIC; WebP, TIFF, AVIF;
EXIF orientation applied; file names in natural order) or a video file (MP4, MOV, MKV,
WebM, ...; a frame every 1/--fps seconds, decoded with PyAV).

Label maps (optional, photos only): INPUT/labels/<photo stem>.png, a single-channel PNG of
label ids per photo at the photo's size (IMG_1.jpg -> labels/IMG_1.png), and INPUT/labels.json
naming the ids ({"0": "floor", "1": "mug", ...}). Every photo needs one. They are copied to
DATA/labels/<image stem>.png and DATA/labels.json for the registered images, so `featgs train
--teacher labels` can use them. Undistortion would move the images away from their label
maps, so --camera-model auto fits PINHOLE cameras when label maps are given (a radial model
with label maps is an error).

Which pairs are matched (--matcher auto): sequential neighbours for a video; every pair
(exhaustive) for up to 100 photos; beyond that a vocabulary tree (--vocab-tree PATH, a
local COLMAP vocabulary tree file; nothing is downloaded) or else sequential neighbours in
file-name order. Exhaustive matching grows with the square of the image count (4950 pairs
at 100 images).

Prints images registered of those given (and which were left out), the mean reprojection
error, the number of points and the seconds of each stage. Fewer than 3 usable images, an
unreadable photo, a video that does not decode, or a reconstruction that poses fewer than
half of the images is an error (exit 2) and leaves DATA as it was; posing more than half
but not all is a warning. When the mapper makes several models, the largest is kept.
"""

EPILOG = """\
examples:
  featgs process photos/ --out data/garden
  featgs process walk.mp4 --out data/walk --fps 3
  featgs process photos/ --out data/big --matcher vocab --vocab-tree vocab_tree.bin
  featgs train data/garden --out runs/garden --downscale 4 --teacher none
"""


def register(subparsers) -> None:
    from featgs.process import ProcessConfig

    p = subparsers.add_parser("process", help="photos or a video -> a posed dataset (structure from motion)",
                              description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", type=Path, help="folder of photos, or a video file")
    p.add_argument("--out", metavar="DATA", type=Path, required=True, help="dataset folder to create")
    p.add_argument("--force", action="store_true", help="replace DATA if it exists and is not empty")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p, ProcessConfig, title="structure from motion options")
    p.set_defaults(func=run_process)


def print_warnings(summary) -> None:
    for w in summary.warnings:
        print(f"featgs: warning: {w}", file=sys.stderr)


def run_process(args: argparse.Namespace) -> int:
    from featgs.process import ProcessConfig, format_summary, process_input

    config = config_from_args(ProcessConfig, args)
    summary = process_input(args.input, args.out, config, force=args.force, progress=not args.quiet)
    for note in summary.notes:
        print(note)
    print_warnings(summary)
    print(format_summary(summary, str(args.out)))
    teacher = "labels" if summary.labels else "none"
    print(f"next: featgs train {args.out} --out RUN --teacher {teacher}   (or featgs run {args.out} --out RUN)")
    return 0
