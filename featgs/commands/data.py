"""``featgs data``: inspect a dataset folder as the loaders see it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from featgs.data import load_scene
from featgs.data.scene import Scene

DESCRIPTION = """\
Load a dataset folder and describe it. Formats, detected from the folder's contents:
  transforms  transforms.json (nerfstudio, instant-ngp; also `featgs scene make` output)
  blender     transforms_train.json [+ _val, _test] (NeRF-synthetic)
  colmap      sparse/0/ or sparse/ (cameras, images, points3D .bin or .txt) and images/
Frames whose image file is missing are skipped (counted in num_skipped).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="inspect datasets (info)", description="Inspect datasets.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: p.print_help() or 2)
    info = sub.add_parser(
        "info",
        help="describe a dataset folder (format, views, size, points, labels)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("dir", metavar="DIR", type=Path, help="dataset folder")
    info.add_argument("--downscale", metavar="F", type=float, default=1.0, help="divide image sizes by F, caching the downscaled images on disk: beside the originals "
                      "(images_F/), or in ~/.cache/featgs where the dataset is read-only (default: 1)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.set_defaults(func=run_info)


def describe(scene: Scene) -> dict:
    """The facts ``featgs data info`` prints (sizes of the first train view)."""
    first = scene.train[0]
    return {
        "root": str(scene.root),
        "format": scene.format,
        "num_train": len(scene.train),
        "num_test": len(scene.test),
        "num_skipped": scene.num_skipped,
        "width": first.camera.width,
        "height": first.camera.height,
        "has_points": scene.points is not None,
        "num_points": 0 if scene.points is None else len(scene.points),
        "has_labels": all(v.labels_path is not None for v in scene.train),
        "num_labels": len(scene.label_names or {}),
        "has_depth": all(v.depth_path is not None for v in scene.train),
        "has_masks": any(v.mask_path is not None for v in scene.views),
        "undistorted": any(v.camera.distortion is not None for v in scene.views),
        "normalization_scale": float(scene.normalization[0, 0]),
    }


def run_info(args: argparse.Namespace) -> int:
    facts = describe(load_scene(args.dir, downscale=args.downscale))
    if args.json:
        print(json.dumps(facts))
    else:
        width = max(len(k) for k in facts)
        for key, value in facts.items():
            print(f"{key:<{width}}  {str(value).lower() if isinstance(value, bool) else value}")
    return 0
