"""``featgs segment``: label every pixel of a view of a run with the closest label text."""

from __future__ import annotations

import argparse
from pathlib import Path

from featgs.commands.query import check_png, comma_list, save_png
from featgs.errors import FeatgsError

DESCRIPTION = """\
Render a view of a trained run and label each pixel with the label text whose embedding is
most similar (cosine) to the rendered feature. Writes the label map as a colour PNG and prints
each label's colour and share of the pixels.
"""

EPILOG = """\
examples:
  featgs segment out/demo/run --view 0 --out seg.png                 # the run's label names
  featgs segment out/demo/run --labels cup,fruit,book,table,floor,wall --view 2 --out seg.png
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment a view by label texts (colour PNG)", description=DESCRIPTION,
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train` or `featgs demo`")
    p.add_argument("--labels", metavar="A,B,...", type=comma_list,
                   help="label texts, comma-separated (default: the run's label names)")
    p.add_argument("--view", metavar="I", type=int, default=0, help="test view index (default: %(default)s)")
    p.add_argument("--out", metavar="SEG.png", type=Path, required=True, help="colour label map to write")
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    import torch

    from featgs.pictures import palette
    from featgs.query import FeatureField

    check_png("--out", args.out)
    if args.labels is not None and len(set(args.labels)) != len(args.labels):
        raise FeatgsError("--labels: each label may appear once")
    field = FeatureField.load(args.run)
    camera = field.camera(args.view)
    labels = list(args.labels or field.label_names)
    seg = field.segment(camera, labels or None)
    colors = palette(len(labels))
    save_png(args.out, torch.from_numpy(colors).float()[seg] / 255)
    counts = torch.bincount(seg.reshape(-1), minlength=len(labels))
    width = max(len(name) for name in labels)
    for name, color, count in zip(labels, colors, counts.tolist()):
        print(f"{name:<{width}}  #{bytes(color.tolist()).hex()}  {100 * count / seg.numel():5.1f}%")
    print(f"label map of test view {args.view} -> {args.out}")
    return 0
