"""``featgs render``: one view of a Gaussian PLY as a PNG, and optionally features and depth."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from featgs.atomic import atomic_open
from featgs.camera import MAX_IMAGE_SIDE, Camera
from featgs.device import resolve_device
from featgs.errors import FeatgsError
from featgs.gaussians import load_ply
from featgs.render import BACKENDS, render
from featgs.render.budget import check_render_fits

DESCRIPTION = """\
Render one view of a Gaussian scene (a 3DGS PLY, with feat_* properties for features) as an
8-bit RGB PNG, and optionally its feature map and expected depth as .npy arrays.

The camera is a JSON file in the OpenCV convention (x right, y down, z forward):
  {"width": 640, "height": 480,
   "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
   "camtoworld": [[...4 numbers...], [...], [...], [0, 0, 0, 1]]}
Renders on the GPU when one is available, else on the CPU.
"""

EPILOG = """\
example:
  featgs render runs/garden/scene.ply --camera cams/view0.json --out view0.png \\
      --features-out view0_feat.npy --depth-out view0_depth.npy --background 1,1,1
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a view of a PLY to PNG (and features / depth to .npy)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ply", metavar="PLY", type=Path, help="Gaussian scene in the 3DGS PLY layout (a decoder beside it, NAME.decoder.safetensors, is used if present)")
    p.add_argument("--camera", metavar="CAM.json", type=Path, required=True, help="camera JSON: width, height, K (3x3 pixels), camtoworld (4x4, OpenCV)")
    p.add_argument("--out", metavar="OUT.png", type=Path, required=True, help="8-bit RGB image to write")
    p.add_argument("--features-out", metavar="F.npy", type=Path, help="rendered features, float32 [H, W, D] (decoded when the scene has a decoder)")
    p.add_argument("--depth-out", metavar="D.npy", type=Path, help="expected depth per pixel, float32 [H, W] (0 where nothing is hit)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="renderer (default: auto, the fastest available)")
    p.add_argument("--background", metavar="R,G,B", type=_parse_background, help="background colour, three numbers in [0, 1] (default: 0,0,0)")
    p.add_argument("--sh-degree", metavar="N", type=int, help="SH degree to evaluate, 0..the scene's degree (default: all of it)")
    p.set_defaults(func=run)


def _parse_background(text: str) -> Tuple[float, float, float]:
    try:
        rgb = tuple(float(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
        raise argparse.ArgumentTypeError(f"expected three numbers in [0, 1] like 1,1,1, got {text!r}")
    return rgb  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    outputs = _check_outputs([("--out", args.out, ".png"), ("--features-out", args.features_out, ".npy"), ("--depth-out", args.depth_out, ".npy")])
    camera = Camera.load_json(args.camera)
    camera.check_plausible(max_focal=100 * MAX_IMAGE_SIDE, source=f"{args.camera}: camera")  # what float32 can render
    gaussians = load_ply(args.ply)
    if args.sh_degree is not None and not 0 <= args.sh_degree <= gaussians.sh_degree:
        raise FeatgsError(f"--sh-degree: {args.ply} holds SH degree {gaussians.sh_degree}; expected 0..{gaussians.sh_degree}, got {args.sh_degree}")
    if args.features_out is not None and gaussians.feature_dim == 0:
        raise FeatgsError(f"{args.ply}: has no feat_* properties, so --features-out has nothing to render")

    device = resolve_device()
    channels = gaussians.output_feature_dim if args.features_out is not None else 0
    check_render_fits(gaussians, camera, channels=channels, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        out = render(
            gaussians.to(device),
            camera,
            backend=args.backend,
            sh_degree=args.sh_degree,
            background=args.background,
            features=args.features_out is not None,
        )
    seconds = time.perf_counter() - start

    rgb = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    with atomic_open(args.out, "wb") as f:
        Image.fromarray(rgb).save(f, format="PNG")
    if args.features_out is not None:
        _save_npy(args.features_out, out.features)
    if args.depth_out is not None:
        _save_npy(args.depth_out, out.depth[..., 0])
    print(f"rendered {camera.width}x{camera.height} from {len(gaussians)} Gaussians in {seconds:.2f} s -> {', '.join(map(str, outputs))}")
    return 0


def _check_outputs(candidates: List[Tuple[str, Optional[Path], str]]) -> List[Path]:
    """The given output paths, once each has the right extension and can be written."""
    paths = []
    for flag, path, ext in candidates:
        if path is None:
            continue
        if path.suffix.lower() != ext:
            raise FeatgsError(f"{flag} {path}: expected a {ext} file")
        if path.is_dir():
            raise FeatgsError(f"{flag} {path}: is a folder; expected a {ext} file")
        if path.resolve() in (p.resolve() for p in paths):
            raise FeatgsError(f"{flag} {path}: the same file is given for another output")
        _check_folder(flag, path)
        paths.append(path)
    return paths


def _check_folder(flag: str, path: Path) -> None:
    """The output's folder exists or can be created (its nearest existing ancestor is a writable folder)."""
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise FeatgsError(f"{flag} {path}: {folder} is a file; expected a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FeatgsError(f"{flag} {path}: folder {folder} is not writable")


def _save_npy(path: Path, tensor: torch.Tensor) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, tensor.detach().to("cpu", torch.float32).numpy())
