"""Geometry quality benchmark: colour-only training on three kinds of capture, default settings.

    python benchmarks/quality.py [--only tabletop,object,colmap_small] [--iters N] [--colmap DIR]

Scenes (each trained with `featgs train DATA --teacher none` and its defaults, then scored on
its test views with `featgs eval`):

- tabletop: the built-in room scene (transforms.json, SfM-like points), 128x128;
- object: the built-in object scene in NeRF-synthetic format (RGBA, no points: random
  initialisation in the volume the cameras look at), 100x100, scored over white;
- colmap_small: a real photo capture with its COLMAP model (../shared/data/colmap_small,
  23 photos, 1000x658, copied first since the shared copy is read-only) at --downscale 4
  (250x165), every 8th photo held out.

Each training runs in its own process (`featgs train`), so timings include nothing else.
Prints one row per scene: test PSNR, SSIM, Gaussians, training seconds, seconds per step
(median, max, max/median, from the step times in log.jsonl). Writes
benchmarks/results/quality-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, print_table, save_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COLMAP_SMALL = ROOT.parent / "shared" / "data" / "colmap_small"


def featgs(*args: str) -> str:
    """Run the CLI in a fresh process; its stdout (raises with its stderr on failure)."""
    proc = subprocess.run([sys.executable, "-m", "featgs", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"featgs {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def make_data(name: str, work: Path, colmap: Path) -> tuple[Path, list[str]]:
    """The dataset folder of a scene and the extra `featgs train` arguments it needs."""
    if name == "tabletop":
        featgs("scene", "make", "tabletop", "--out", str(work / name))
        return work / name, []
    if name == "object":
        featgs("scene", "make", "object", "--out", str(work / name))
        return work / name, []
    if name == "colmap_small":
        if not (colmap / "sparse").is_dir():
            raise SystemExit(f"{colmap}: no COLMAP capture there; pass --colmap DIR")
        shutil.copytree(colmap, work / name)
        return work / name, ["--downscale", "4"]
    raise SystemExit(f"--only: unknown scene {name!r}")


def step_times(log: Path) -> list[float]:
    """Seconds of each logged step (the last of every 10), from log.jsonl."""
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r["step_seconds"] for r in recs if "step_seconds" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="tabletop,object,colmap_small", help="comma-separated scenes (default: all)")
    ap.add_argument("--iters", type=int, default=None, help="training steps (default: featgs train's)")
    ap.add_argument("--colmap", type=Path, default=COLMAP_SMALL, help="the colmap_small capture (default: %(default)s)")
    args = ap.parse_args()

    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="featgs-quality-") as tmp:
        work = Path(tmp)
        for name in args.only.split(","):
            data, extra = make_data(name, work, args.colmap)
            if args.iters:
                extra += ["--iters", str(args.iters)]
            run = work / f"{name}-run"
            t0 = time.perf_counter()
            featgs("train", str(data), "--out", str(run), "--teacher", "none", "--quiet", *extra)
            seconds = time.perf_counter() - t0
            m = json.loads(featgs("eval", str(run), "--json", "--no-pictures"))
            info = json.loads((run / "run.json").read_text())
            times = step_times(run / "log.jsonl")
            med, worst = statistics.median(times), max(times)
            res = {
                "scene": name, "psnr": m["psnr"], "ssim": m["ssim"], "num_gaussians": info["num_gaussians"],
                "seconds": seconds, "steps": info["steps"], "step_seconds_median": med, "step_seconds_max": worst,
                "init": info["init"]["kind"], "background": info["background"]["train"], "args": extra,
            }
            results.append(res)
            rows.append([name, f"{res['psnr']:.2f}", f"{res['ssim']:.4f}", res["num_gaussians"], res["init"],
                         res["background"], f"{seconds:.0f}", res["steps"], f"{med:.3f}", f"{worst:.3f}", f"{worst / med:.1f}"])
            print(f"{name}: PSNR {res['psnr']:.2f} dB, {seconds:.0f} s", flush=True)
    headers = ["scene", "test PSNR", "SSIM", "Gaussians", "init", "background", "seconds", "steps",
               "s/step median", "s/step max", "max/median"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = print_table(headers, rows)
    table = f"device: {device_name(device)}\n" + table
    payload = {"device": device_name(device), "device_kind": device.type, "results": results}
    print(f"results: {save_results('quality', payload, table)}")


if __name__ == "__main__":
    main()
