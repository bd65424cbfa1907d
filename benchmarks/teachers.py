"""Teacher extraction throughput: seconds per image of the SAM and CLIP teachers.

    python benchmarks/teachers.py [--full] [--images 3] [--width 640 --height 480]

No weights can be downloaded, so every model has random weights of its real architecture,
saved to a checkpoint file and loaded through the teachers as a user's checkpoint is (the
load time is reported apart). Throughput does not depend on the weights' values.

Default: the tiny test models (SAM vit_tiny; a 2-layer, 64-wide CLIP ViT from an open_clip
JSON config). --full adds SAM vit_b and CLIP ViT-B-16 at their real sizes; and the per-click
cost of SAM's mask decoder, which sets the price of --clip-sharpen sam (N x N clicks per image).
Writes benchmarks/results/teachers-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _util import device_name, print_table, save_results  # noqa: E402
from foundation import write_checkpoints  # noqa: E402

import open_clip  # noqa: E402

from featgs.teachers import sam_model  # noqa: E402
from featgs.teachers.base import resolve_device  # noqa: E402
from featgs.teachers.clip import ClipTeacher  # noqa: E402
from featgs.teachers.sam import SamTeacher  # noqa: E402
from featgs.teachers.sam_prompter import laid_out  # noqa: E402


def measure(teacher, images) -> tuple[float, float]:
    """(seconds to load the model, median seconds per image after one warm-up image)."""
    t0 = time.perf_counter()
    teacher.prepare()
    load = time.perf_counter() - t0
    teacher.encode_view(images[0])
    times = []
    for image in images[1:]:
        if teacher.device.type == "cuda":
            torch.cuda.synchronize(teacher.device)
        t0 = time.perf_counter()
        teacher.encode_view(image)
        if teacher.device.type == "cuda":
            torch.cuda.synchronize(teacher.device)
        times.append(time.perf_counter() - t0)
    return load, sorted(times)[len(times) // 2]


def decode_seconds(sam, device: torch.device, clicks: int = 16) -> float:
    """Seconds per click of SAM's prompt encoder + mask decoder (a batch of ``clicks``), through
    segment-anything's predictor on a given feature map, as the viewer's clicks go."""
    size = sam_model.IMAGE_SIZE
    predictor = laid_out(sam, torch.randn(sam_model.DIM, sam_model.EMBED_SIZE, sam_model.EMBED_SIZE, device=device),
                         (size, size))
    xy = torch.rand(clicks, 1, 2, device=device) * size
    labels = torch.ones(clicks, 1, dtype=torch.int64, device=device)
    predictor.predict_torch(xy, labels, multimask_output=True)
    t0 = time.perf_counter()
    predictor.predict_torch(xy, labels, multimask_output=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / clicks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also SAM vit_b and CLIP ViT-B-16 at full size")
    parser.add_argument("--images", type=int, default=3, help="images per model (the first is a warm-up)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--clip-size", type=int, default=448, help="longest side CLIP sees")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(args.height, args.width, 3, generator=gen) for _ in range(max(2, args.images))]

    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = write_checkpoints(folder / "tiny")
        cases = [("sam", "vit_tiny (tests)", SamTeacher(tiny.sam, device=device)),
                 ("clip", "tiny ViT (tests)", ClipTeacher(str(tiny.clip_config), tiny.clip, size=args.clip_size,
                                                          device=device))]
        if args.full:
            sam_path = folder / "sam_vit_b.pth"
            torch.save(sam_model.build_sam("vit_b").state_dict(), sam_path)
            clip_path = folder / "vit_b_16.pt"
            torch.save(open_clip.create_model("ViT-B-16").state_dict(), clip_path)
            cases += [("sam", "vit_b", SamTeacher(sam_path, device=device)),
                      ("clip", "ViT-B-16", ClipTeacher("ViT-B-16", clip_path, size=args.clip_size, device=device))]
        for name, model, teacher in cases:
            load, seconds = measure(teacher, images)
            shape = (teacher.dim, *teacher.resolution_for(args.width, args.height))
            rows.append([name, model, "x".join(map(str, shape)), f"{load:.2f}", f"{seconds:.3f}", f"{1 / seconds:.2f}"])
            records.append({"teacher": name, "model": model, "map": list(shape), "load_s": load,
                            "s_per_image": seconds, "images_per_s": 1 / seconds})
            if name == "sam":
                per_click = decode_seconds(teacher.sam, device)
                rows.append([name, f"{model} mask decoder", "per click", "-", f"{per_click:.3f}",
                             f"{1 / per_click:.2f}"])
                records.append({"teacher": name, "model": f"{model} mask decoder", "s_per_click": per_click})
    title = (f"teacher extraction, {args.width}x{args.height} images, CLIP longest side {args.clip_size}, "
             f"random weights; {device_name(device)}")
    print(title)
    table = title + "\n" + print_table(["teacher", "model", "map", "load s", "s/image", "images/s"], rows)
    save_results("teachers", {"device_kind": device.type, "device": device_name(device), "width": args.width,
                              "height": args.height, "clip_size": args.clip_size, "results": records}, table)


if __name__ == "__main__":
    main()
