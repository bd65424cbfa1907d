"""``featgs scene``: make a built-in procedural scene into a dataset folder; list them; export
its label maps as a benchmark's annotations."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from featgs.data.procedural import MakeConfig, builtin_scene_names, load_scene_spec, make_scene, parse_scene_spec, resolve_scene
from featgs.data.procedural.make import __doc__ as MAKE_DOC
from featgs.errors import FeatgsError

DESCRIPTION = """\
Render a procedural scene (a plain-text description: scenes/NAME.txt, or any .txt path)
from an orbit or a sphere of cameras into a dataset folder that `featgs data info` and
training read. Scenes with `background transparent` (such as `object`) are written in
NeRF-synthetic ("Blender") format: RGBA images on a transparent background, no point cloud.
Deterministic: the same scene, options and seed give identical files. A scene's `defaults`
statement sets its own size and view counts; the flags below override them.
"""

# the output layout, as the make module documents it (less its one-line summary)
LAYOUT = (MAKE_DOC or "").split("\n\n", 1)[-1].replace("::", ":")

EPILOG = """\
examples:
  featgs scene make tabletop --out scenes/tabletop --size 128 --views 60 --test-views 12
  featgs scene make object --out scenes/object      # NeRF-synthetic layout, 100x100, 100 + 25 views
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("scene", help="built-in procedural scenes (make, list, export)", description="Built-in procedural scenes.")
    sub = p.add_subparsers(dest="scene_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: p.print_help() or 2)

    make = sub.add_parser(
        "make",
        help="render a scene into a dataset folder",
        description=DESCRIPTION + "\n" + LAYOUT,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument("name", metavar="NAME", help="built-in scene name (see `featgs scene list`) or a path to a scene .txt file")
    make.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to create (must be empty or absent, unless --force)")
    scene_default = "the scene's `defaults`, else {}"
    make.add_argument("--size", type=int, help=f"image width = height in pixels (default: {scene_default.format(MakeConfig.size)})")
    make.add_argument("--views", type=int, help=f"number of train views (default: {scene_default.format(MakeConfig.views)})")
    make.add_argument("--test-views", type=int, help=f"number of test views (default: {scene_default.format(MakeConfig.test_views)})")
    make.add_argument("--seed", type=int, default=MakeConfig.seed, help="random seed of cameras and points (default: %(default)s)")
    make.add_argument(
        "--points",
        type=int,
        help=f"initial points in points3D.ply; none for transparent scenes (default: {scene_default.format(MakeConfig.points)})",
    )
    make.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")
    make.set_defaults(func=run_make)

    lister = sub.add_parser("list", help="list the built-in scenes", description="List the built-in scenes and their labels.")
    lister.set_defaults(func=run_list)

    export = sub.add_parser(
        "export",
        help="write a dataset's label maps as a benchmark's annotations (lerf-ovs, 3d-ovs)",
        description=EXPORT_DESCRIPTION,
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("data", metavar="DATA", type=Path, help="dataset folder with label maps and labels.json "
                        "(e.g. one `featgs scene make` wrote)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="the benchmark's annotation layout")
    export.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to write (must be empty or absent, "
                        "unless --force)")
    export.add_argument("--split", choices=["test", "train", "all"], default="test",
                        help="which views to annotate (default: %(default)s; the train views when there are no test views)")
    export.add_argument("--force", action="store_true", help="write into DIR even if it is not empty")
    export.set_defaults(func=run_export)


def run_make(args: argparse.Namespace) -> int:
    path = resolve_scene(args.name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FeatgsError(f"{path}: not a readable UTF-8 scene file ({e.__class__.__name__})") from None
    spec = parse_scene_spec(text, str(path))  # for its `defaults`; errors name the file and line
    config = MakeConfig.for_scene(spec, size=args.size, views=args.views, test_views=args.test_views, seed=args.seed, points=args.points)
    start = time.perf_counter()
    summary = make_scene(text, str(path), args.out, config, force=args.force)
    layout = "NeRF-synthetic, no point cloud" if summary["format"] == "blender" else f"{summary['num_points']} points"
    print(
        f"wrote {summary['out']}: scene {summary['name']}, {summary['num_train']} train + {summary['num_test']} test views "
        f"of {config.size}x{config.size}, {len(summary['labels'])} labels, {layout} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


EXPORT_FORMATS = ("lerf-ovs", "3d-ovs")

EXPORT_DESCRIPTION = """\
Write the label maps of a dataset's views as a benchmark's annotations, so that
`featgs eval RUN --protocol lerf-ovs|3d-ovs --labels DIR` scores a run trained on it:

  lerf-ovs  DIR/<view>.json: {"info": {"name", "width", "height"}, "objects": [...]}, one object
            per 8-connected piece of each named label in the view: category = the label's
            name, bbox = the piece's pixel box [x1, y1, x2, y2] (inclusive), segmentation = its
            outer contour through boundary pixels (holes filled, as a drawn outline)
  3d-ovs    DIR/segmentations/classes.txt (every label name) and
            DIR/segmentations/<index>/<name>.png for every name (255 on its pixels), index =
            the view's place among all the dataset's views sorted by name
"""

EXPORT_EPILOG = """\
examples:
  featgs scene make tabletop --out scenes/tabletop
  featgs scene export scenes/tabletop --format lerf-ovs --out scenes/tabletop-lerf
  featgs eval runs/tabletop --protocol lerf-ovs --labels scenes/tabletop-lerf --json
"""


def run_export(args: argparse.Namespace) -> int:
    from featgs.data import load_scene
    from featgs.protocols import lerf_ovs, ovs3d

    out = args.out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
        raise FeatgsError(f"{out}: exists and is not an empty folder; choose a new --out or pass --force")
    scene = load_scene(args.data)
    if not scene.label_names:
        raise FeatgsError(f"{args.data}: no labels.json; expected a dataset with label maps and their names")
    views = {"test": scene.test or scene.train, "train": scene.train, "all": scene.views}[args.split]
    if not any(v.labels_path is not None for v in views):
        raise FeatgsError(f"{args.data}: its {args.split} views have no label maps; expected a dataset with label maps")
    start = time.perf_counter()
    if args.format == "lerf-ovs":
        count = lerf_ovs.write_annotations(scene, views, out)
        what = f"{len(views)} frame annotations, {count} objects"
    else:
        count = ovs3d.write_annotations(scene, views, out)
        what = f"{len(set(scene.label_names.values()))} categories x {count} views of masks"
    print(f"wrote {out}: {args.format}, {what} in {time.perf_counter() - start:.1f} s")
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name in builtin_scene_names():
        spec = load_scene_spec(resolve_scene(name))
        counts = spec.instances_per_label()
        labels = ", ".join(f"{label} x{n}" if n > 1 else label for label, n in counts.items())
        print(f"{name}: {labels}" + (" (transparent background: NeRF-synthetic layout)" if spec.transparent else ""))
    return 0
