"""``featgs edit``: delete, extract, recolour or move what a text names; write a new PLY."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Tuple

from featgs.commands.query import add_query_options, query_args
from featgs.errors import FeatgsError

DESCRIPTION = """\
Select the Gaussians a text names (as `featgs query` does, cleaned so that the whole object
goes, hidden Gaussians included), apply one edit and write the result as a standard 3DGS PLY
with the features (feat_*) and the run's decoder beside it (NAME.decoder.safetensors).
The run itself is not changed.
"""

EPILOG = """\
examples:
  featgs edit out/demo/run --delete "red mug" --out no_mug.ply
  featgs edit out/demo/run --extract banana --out banana.ply
  featgs edit out/demo/run --recolor 0.1,0.3,0.9 tomato --out blue_tomato.ply
  featgs edit out/demo/run --translate 0,0.1,0 "blue book" --out moved.ply
  featgs render no_mug.ply --camera CAM.json --out no_mug.png
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("edit", help="delete / extract / recolour / move what a text names -> PLY",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train` or `featgs demo`")
    p.add_argument("text", metavar="TEXT", help="what to edit, e.g. \"red mug\"")
    ops = p.add_mutually_exclusive_group(required=True)
    ops.add_argument("--delete", action="store_true", help="remove it")
    ops.add_argument("--extract", action="store_true", help="keep only it")
    ops.add_argument("--recolor", metavar="R,G,B", type=_triple(0.0, 1.0),
                     help="give it this colour (numbers in 0..1), keeping its shading")
    ops.add_argument("--translate", metavar="X,Y,Z", type=_triple(-math.inf, math.inf),
                     help="move it by this offset, in the run's frame")
    add_query_options(p)
    p.add_argument("--out", metavar="EDITED.ply", type=Path, required=True, help="PLY to write")
    p.set_defaults(func=run_edit)


def _triple(lo: float, hi: float):
    def parse(text: str) -> Tuple[float, float, float]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or not all(math.isfinite(v) and lo <= v <= hi for v in values):
            bounds = f" in [{lo:g}, {hi:g}]" if math.isfinite(lo) else ""
            raise argparse.ArgumentTypeError(f"expected three numbers{bounds} like 0.1,0.2,0.3, got {text!r}")
        return values  # type: ignore[return-value]

    return parse


def run_edit(args: argparse.Namespace) -> int:
    from featgs.query import FeatureField
    from featgs.query.edit import make_edit
    from featgs.run import RunPaths

    if args.out.suffix.lower() != ".ply":
        raise FeatgsError(f"--out {args.out}: expected a .ply file")
    if args.out.is_dir():
        raise FeatgsError(f"--out {args.out}: is a folder; expected a .ply file")
    run_ply = RunPaths(args.run).ply.resolve()
    if args.out.resolve() == run_ply:
        raise FeatgsError(f"--out {args.out}: is the run's own PLY; write the edit elsewhere")
    options = query_args(args)
    name = next(n for n in ("delete", "extract", "recolor", "translate") if getattr(args, n))
    op = make_edit(name, rgb=args.recolor, offset=args.translate)
    verb = {"delete": "deleted", "extract": "extracted", "recolor": "recoloured", "translate": "moved"}[name]
    field = FeatureField.load(args.run)
    sel = field.query(args.text, **options)
    if not len(sel):
        raise FeatgsError(f"{args.text!r} selects no Gaussians; try another text or a lower --threshold")
    edited = field.edit(sel, op)
    edited.save(args.out)
    print(f"{verb} {len(sel)} of {sel.num_gaussians} Gaussians ({args.text!r}) -> {args.out} "
          f"({edited.num_gaussians} Gaussians)")
    return 0
