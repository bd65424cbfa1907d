"""``featgs query``: which Gaussians of a run does a text name? Optionally its heat map at a view."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from featgs.errors import FeatgsError

DESCRIPTION = """\
Select the Gaussians of a trained run that a text names, and print how many, their bounding
box and centroid: in the run's frame (the PLY's coordinates) and, for runs of normalised
scenes, in the dataset's own frame (the one its camera poses are in; JSON key dataset_frame).

Each Gaussian's relevancy is LERF's pairwise softmax of its feature's cosine to the text
against negative phrases (default: object, things, stuff, texture). Which Gaussians are
selected depends on --rule:
  labels    (default when the run has label names) the text must also beat every label name
            it does not itself name; --threshold is the win probability (default 0.5)
  relative  (default otherwise) relevancy >= median + T * (99.9th percentile - median),
            T = --threshold (default 0.5)
  absolute  relevancy >= --threshold
The selection is then cleaned (floaters dropped, the Gaussians it hides added; --no-clean
skips that). With --out, writes the relevancy heat map of one test view as a PNG.
"""

EPILOG = """\
examples:
  featgs query out/demo/run "red mug"
  featgs query out/demo/run cup --json
  featgs query out/demo/run fruit --view 3 --out fruit.png
  featgs query out/demo/run "something to read" --negatives object,thing --rule relative --threshold 0.6
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("query", help="select the Gaussians a text names (count, bbox, centroid, heat map)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train` or `featgs demo`")
    p.add_argument("text", metavar="TEXT", help="what to look for, e.g. \"red mug\"")
    add_query_options(p)
    p.add_argument("--json", action="store_true", help="print the selection as JSON (num_selected, bbox, centroid, ...)")
    p.add_argument("--ids", action="store_true", help="with --json: include the selected Gaussian ids")
    p.add_argument("--view", metavar="I", type=int, help="test view for --out (default 0)")
    p.add_argument("--out", metavar="HEAT.png", type=Path, help="write the relevancy heat map of the view")
    p.set_defaults(func=run_query)


def add_query_options(p: argparse.ArgumentParser) -> None:
    """The options shared by the commands that select by text (query, edit)."""
    from featgs.query.relevancy import RULES

    p.add_argument("--negatives", metavar="A,B,...", type=comma_list,
                   help="negative phrases, comma-separated (default: object,things,stuff,texture)")
    p.add_argument("--no-negatives", action="store_true", help="plain cosine relevancy, no negative phrases")
    p.add_argument("--rule", choices=RULES, default="auto", help="threshold rule (default: %(default)s)")
    p.add_argument("--threshold", metavar="T", type=float, help="the rule's parameter (see above)")
    p.add_argument("--no-clean", action="store_true", help="keep the raw thresholded selection")


def comma_list(text: str) -> List[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-empty texts, got {text!r}")
    return items


def query_args(args: argparse.Namespace) -> dict:
    """Keyword arguments of :meth:`FeatureField.query` from the shared options."""
    from featgs.query import QueryConfig

    if args.no_negatives and args.negatives:
        raise FeatgsError("--negatives and --no-negatives exclude each other")
    negatives: Optional[List[str]] = [] if args.no_negatives else args.negatives
    return dict(negatives=negatives, config=QueryConfig(rule=args.rule, threshold=args.threshold, clean=not args.no_clean))


def check_png(flag: str, path: Optional[Path]) -> None:
    if path is None:
        return
    if path.suffix.lower() != ".png":
        raise FeatgsError(f"{flag} {path}: expected a .png file")
    if path.is_dir():
        raise FeatgsError(f"{flag} {path}: is a folder; expected a .png file")


def save_png(path: Path, image) -> None:
    from PIL import Image

    from featgs.atomic import atomic_open
    from featgs.pictures import to_uint8

    with atomic_open(path, "wb") as f:
        Image.fromarray(to_uint8(image)).save(f, format="PNG")


def run_query(args: argparse.Namespace) -> int:
    from featgs.query import FeatureField

    if args.view is not None and args.out is None:
        raise FeatgsError("--view picks the view of --out; give --out HEAT.png too")
    if args.ids and not args.json:
        raise FeatgsError("--ids needs --json")
    check_png("--out", args.out)
    options = query_args(args)
    field = FeatureField.load(args.run)
    camera = field.camera(0 if args.view is None else args.view) if args.out is not None else None
    sel = field.query(args.text, **options)
    if args.out is not None:
        save_png(args.out, field.render(camera, "relevancy", text=args.text, negatives=options["negatives"]))
    if args.json:
        out = field.describe(sel, with_ids=args.ids)
        if args.out is not None:
            out["heat_map"] = str(args.out)
        print(json.dumps(out))
        return 0
    print(f"{args.text!r}: {len(sel)} of {sel.num_gaussians} Gaussians (rule {sel.rule}, threshold {sel.threshold:.3g})")
    summary = field.describe(sel)
    for frame, where in (("run frame", summary), ("dataset frame", summary.get("dataset_frame"))):
        if where and where["bbox"] is not None:
            lo, hi = (", ".join(f"{v:.3f}" for v in row) for row in where["bbox"])
            print(f"  {frame + ':':15} bbox [{lo}] .. [{hi}], centroid [{', '.join(f'{v:.3f}' for v in where['centroid'])}]")
    if args.out is not None:
        print(f"relevancy heat map of test view {0 if args.view is None else args.view} -> {args.out}")
    return 0
