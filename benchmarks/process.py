"""Structure from motion benchmark: `featgs process` on real photos and on rendered frames.

    python benchmarks/process.py [--only colmap_small,textured-video,textured-photos,tabletop-video]
                                 [--frames 100] [--size 640] [--colmap DIR]

Captures (each processed by `featgs process` in its own process, default options unless said):

- colmap_small: 23 real photos, 1000 px wide (../shared/data/colmap_small/images), exhaustive
  matching; cameras compared with the capture's own COLMAP model;
- textured-video: --frames views of the built-in tabletop scene with detailed textures
  (tests/test_process.py explains why the plain one does not register) on its orbit, at
  --size px, encoded as an H.264 video at 10 fps and processed with --fps 10 (sequential
  matching, the default for videos);
- textured-photos: the same frames as a folder of PNG photos (exhaustive matching, the
  default up to 100 photos);
- tabletop-video: as textured-video, on the built-in tabletop scene as it is.

Cameras are compared with the ground truth after a similarity alignment (Umeyama on camera
centres): median rotation error in degrees, median centre error as a percentage of the
diagonal of the reference centres' bounding box. Prints one row per capture with the seconds
of each stage; writes benchmarks/results/process-cpu.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, print_table, save_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
COLMAP_SMALL = ROOT.parent / "shared" / "data" / "colmap_small"
STAGES = ("inputs", "features", "matching", "mapping", "undistort", "pyramid", "total")
VIDEO_FPS = 10


def featgs(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a fresh process: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "featgs", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def poses(data: Path) -> dict[str, np.ndarray]:
    from featgs.data import load_scene

    scene = load_scene(data, normalize=False)
    return {v.camera.name: v.camera.camtoworld.numpy() for v in scene.views}


def render_frames(work: Path, name: str, frames: int, size: int) -> Path:
    """Render ``frames`` orbit views of the scene (textured or built-in) at ``size`` px."""
    from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
    from test_process import textured_tabletop_text

    out = work / f"{name}-scene"
    if not out.exists():
        text = textured_tabletop_text() if name == "textured" else resolve_scene("tabletop").read_text()
        t0 = time.perf_counter()
        make_scene(text, f"{name}.txt", out, MakeConfig(size=size, views=frames, test_views=0, points=0))
        print(f"rendered {frames} views of {name} at {size} px in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def capture(name: str, work: Path, args) -> tuple[Path, list[str], Path, dict]:
    """(input, extra process flags, reference dataset, staged name -> reference name)."""
    if name == "colmap_small":
        if not (args.colmap / "images").is_dir():
            raise SystemExit(f"{args.colmap}: no COLMAP capture there; pass --colmap DIR")
        return args.colmap / "images", [], args.colmap, {}
    scene_name, kind = name.split("-")
    scene = render_frames(work, scene_name, args.frames, args.size)
    if kind == "photos":
        return scene / "images", [], scene, {}
    from test_process import encode_video

    video = work / f"{scene_name}.mp4"
    if not video.exists():
        encode_video(sorted((scene / "images").iterdir()), video, fps=VIDEO_FPS)
    rename = {f"frame_{k:05d}": f"train_{k:04d}" for k in range(args.frames)}
    return video, ["--fps", str(VIDEO_FPS)], scene, rename


def main() -> None:
    from featgs.process import compare_cameras

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="colmap_small,textured-video,textured-photos,tabletop-video",
                    help="comma-separated captures (default: all)")
    ap.add_argument("--frames", type=int, default=100, help="rendered frames (default: %(default)s)")
    ap.add_argument("--size", type=int, default=640, help="rendered frame size in px (default: %(default)s)")
    ap.add_argument("--colmap", type=Path, default=COLMAP_SMALL, help="the colmap_small capture (default: %(default)s)")
    args = ap.parse_args()

    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="featgs-process-bench-") as tmp:
        work = Path(tmp)
        for name in args.only.split(","):
            source, extra, reference, rename = capture(name, work, args)
            out = work / f"{name}-data"
            code, stdout, stderr = featgs("process", str(source), "--out", str(out), "--quiet", *extra)
            res = {"capture": name, "args": extra}
            if code != 0:
                res["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {code}"
                print(f"{name}: {res['error']}", flush=True)
                results.append(res)
                rows.append([name, "failed", "", "", "", "", *[""] * len(STAGES)])
                continue
            summary = json.loads((out / "process.json").read_text())["summary"]
            recovered = {rename.get(k, k): v for k, v in poses(out).items()}
            errors = compare_cameras(recovered, poses(reference))
            res.update({
                "given": summary["given"], "registered": summary["registered"], "left_out": summary["left_out"],
                "matcher": summary["matcher"], "image_size": summary["image_size"], "points": summary["points"],
                "mean_reprojection_error": summary["mean_reprojection_error"],
                "median_rotation_deg": errors.median_rotation_deg, "max_rotation_deg": float(errors.rotation_deg.max()),
                "median_centre_percent": 100 * errors.median_centre_relative, "seconds": summary["seconds"],
            })
            results.append(res)
            rows.append([name, f"{res['registered']}/{res['given']}", res["matcher"],
                         f"{res['median_rotation_deg']:.3f}", f"{res['median_centre_percent']:.3f}",
                         f"{res['mean_reprojection_error']:.2f}",
                         *[f"{res['seconds'][s]:.1f}" for s in STAGES]])
            print(f"{name}: {res['registered']}/{res['given']} registered, {res['seconds']['total']:.0f} s", flush=True)
    headers = ["capture", "registered", "matcher", "rot err deg", "centre err %", "reproj px",
               *[f"{s} s" for s in STAGES]]
    table = print_table(headers, rows)
    device = torch.device("cpu")  # pycolmap from PyPI runs SIFT, matching and mapping on the CPU
    header = (f"device: {device_name(device)}\nframes: {args.frames} views at {args.size} px; errors after a "
              "similarity alignment (median over cameras; centre error in % of the reference centres' extent)")
    table = header + "\n" + table
    payload = {"device": device_name(device), "device_kind": device.type, "frames": args.frames, "size": args.size,
               "results": results}
    print(f"results: {save_results('process', payload, table)}")


if __name__ == "__main__":
    main()
