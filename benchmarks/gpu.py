"""GPU benchmark: our cuda backend against gsplat's rasterization, per case, in one run.

    python benchmarks/gpu.py [--quick] [--n 100000 1000000] [--d 3 16 32 64 128 256 512]

Grid (default): N in {100k, 1M} random Gaussians (unit ball, seen from distance 3),
1920x1080 pixels, feature dimension D in {3, 16, 32, 64, 128, 256, 512}. For each case and
backend: forward (no grad) and forward+backward time (median of 5 after a warm-up) and the peak
GPU memory of one forward+backward. The backward takes the gradient of rgb.sum() +
depth.sum() + features.sum() with respect to every parameter (joint training). Both backends
render colour, depth and features from the same Gaussians: gsplat rasterises colour+depth once
and the features again (in chunks of 32 channels); ours rasterises once into the top-32 blend
weights and gathers the features from those. Each row also reports how far the two images are
apart (max |rgb difference|, features relative to their largest value; ours sum each pixel's
top-32 contributors, so the features differ where a pixel has more), so a speed-up is never
read off a wrong image. A case that fails (out of memory, say) is recorded and the run goes on.

Both extensions are compiled before any timing. Writes benchmarks/results/gpu-cuda.{txt,json}
with the device name. Needs a CUDA GPU; the kernels' correctness is tests/test_gpu_backends.py's
and tests/test_emulated_kernels.py's business.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, peak_memory, print_table, save_results, time_it  # noqa: E402

from featgs.gaussians.random import orbit_camera, random_gaussians  # noqa: E402
from featgs.render import render  # noqa: E402

BACKENDS = ("gsplat", "cuda")
NAMES = {"gsplat": "gsplat", "cuda": "ours"}


def measure(g, cam, backend: str, device) -> dict:
    params = g.map(lambda t: t.detach().requires_grad_(True))

    def fwd():
        with torch.no_grad():
            render(params, cam, backend=backend)

    def fwd_bwd():
        out = render(params, cam, backend=backend)
        (out.rgb.sum() + out.depth.sum() + out.features.float().sum()).backward()
        for t in params.params().values():
            t.grad = None

    fwd_bwd()  # warm-up (allocator, lazy initialisation)
    torch.cuda.empty_cache()
    with peak_memory(device) as mem:
        fwd_bwd()
    return {"forward_ms": 1e3 * time_it(fwd, device, repeats=5), "forward_backward_ms": 1e3 * time_it(fwd_bwd, device, repeats=5),
            "peak_mb": mem["peak"] / 2**20}


@torch.no_grad()
def agreement(g, cam) -> dict:
    a = render(g, cam, backend="gsplat")
    b = render(g, cam, backend="cuda")
    fa, fb = a.features.float(), b.features.float()
    return {"rgb_max_abs_diff": float((a.rgb - b.rgb).abs().max()),
            "features_rel_diff": float((fa - fb).abs().max() / fa.abs().max().clamp_min(1e-12))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 100k, D in {16, 128} only")
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="numbers of Gaussians")
    ap.add_argument("--d", type=int, nargs="+", default=[3, 16, 32, 64, 128, 256, 512], help="feature dimensions")
    ap.add_argument("--size", type=int, nargs=2, default=[1920, 1080], metavar=("W", "H"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU")
    device = torch.device("cuda")
    ns = [100_000] if args.quick else args.n
    ds = [16, 128] if args.quick else args.d
    W, H = args.size
    cam = orbit_camera(W, H, distance=3.0)

    t0 = time.perf_counter()
    import gsplat.cuda._backend as gsplat_backend  # compiles gsplat's CUDA code on first use

    assert gsplat_backend._C is not None, "gsplat's CUDA extension did not build"
    from featgs.render.cuda_backend import load_extension

    load_extension()
    print(f"extensions ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    rows, records = [], []
    for n, d in itertools.product(ns, ds):
        g = random_gaussians(n, feature_dim=d, seed=0, scale_range=(0.003, 0.03), device=device)
        rec = {"n": n, "d": d}
        res = {}
        for b in BACKENDS:
            try:
                res[b] = measure(g, cam, b, device)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                res[b] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            torch.cuda.empty_cache()
            rec.update({f"{b}_{k}": v for k, v in res[b].items()})
        ok = all("error" not in r for r in res.values())
        if ok:
            rec["speedup_forward"] = res["gsplat"]["forward_ms"] / res["cuda"]["forward_ms"]
            rec["speedup_forward_backward"] = res["gsplat"]["forward_backward_ms"] / res["cuda"]["forward_backward_ms"]
            try:
                rec.update(agreement(g, cam))
            except Exception as e:  # noqa: BLE001
                rec["agreement_error"] = f"{type(e).__name__}: {e}"
        records.append(rec)
        cells = []
        for b in BACKENDS:
            r = res[b]
            keys = ("forward_ms", "forward_backward_ms", "peak_mb")
            cells += ["error"] * 3 if "error" in r else [f"{r[k]:.1f}" for k in keys]
        speed = (rec.get("speedup_forward"), rec.get("speedup_forward_backward"))
        cells += [f"{x:.2f}x" if x else "-" for x in speed]
        cells += [f"{rec.get(k, float('nan')):.1e}" for k in ("rgb_max_abs_diff", "features_rel_diff")]
        rows.append([f"{n // 1000}k", d] + cells)
        print(rows[-1], {b: r["error"] for b, r in res.items() if "error" in r} or "", file=sys.stderr, flush=True)
        del g
        torch.cuda.empty_cache()
    title = f"{W}x{H} on {device_name(device)} (torch {torch.__version__})"
    print(title)
    headers = ["N", "D"] + [f"{NAMES[b]} {k}" for b in BACKENDS for k in ("fwd ms", "f+b ms", "MB")]
    headers += ["fwd speed-up", "f+b speed-up", "rgb diff", "feat diff"]
    table = print_table(headers, rows)
    save_results("gpu", {"device_kind": "cuda", "device": device_name(device), "torch": torch.__version__,
                         "size": [W, H], "cases": records}, title + "\n" + table)


if __name__ == "__main__":
    main()
