"""``featgs features``: build a scene's teacher feature cache ahead of training, and compress it."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from featgs.configargs import add_config_arguments, config_from_args
from featgs.errors import FeatgsError
from featgs.teachers.options import NAMES, TeacherOptions

EXTRACT_DESCRIPTION = """\
Compute a teacher's feature map of every view of a dataset into DATA/features/<teacher>/
(fp16 safetensors, one file per image). An interrupted run resumes where it stopped; maps of
another model, checkpoint or setting are replaced. `featgs train` builds the same cache on
its own; extracting first separates the slow part and shows its speed.

  sam   Segment Anything's image encoder: 256 channels on (up to) 64 x 64 cells.
  clip  an open_clip model's dense MaskCLIP features, from a ViT or ConvNeXt vision tower
        (--model: an open_clip name such as ViT-B-16 or convnext_base_w, an open_clip JSON
        model config, or a folder with an open_clip_config.json); --sharpen sam averages
        them inside SAM's automatic masks.
  labels  text embeddings of per-pixel labels (scenes that have them).

Checkpoints are local files (.pth/.pt/.bin state dicts or .safetensors); nothing is downloaded.

Under torchrun (e.g. `torchrun --nproc_per_node 4 -m featgs features extract DATA ...`) the
views are shared out: view i is computed and written by rank i % world, one GPU each.
"""

EXTRACT_EPILOG = """\
examples:
  featgs features extract scenes/room --teacher sam --checkpoint sam_vit_b_01ec64.pth
  featgs features extract scenes/room --teacher clip --model ViT-B-16 --checkpoint open_clip_model.safetensors \\
      --sharpen sam --sam-checkpoint sam_vit_b_01ec64.pth
"""

COMPRESS_DESCRIPTION = """\
Compress a complete feature cache to its top r principal components: DATA/features/<teacher>.pca<r>/
holds r-channel fp16 maps and the basis; loading a map reconstructs all D channels. Prints
the size ratio and the reconstruction error.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("features", help="build (extract) or compress a teacher feature cache",
                              description="Teacher feature caches.")
    sub = p.add_subparsers(dest="features_command", metavar="SUBCOMMAND", parser_class=type(p))
    p.set_defaults(func=lambda args: p.print_help() or 2)

    e = sub.add_parser("extract", help="compute a teacher's maps of every view (resumable)",
                       description=EXTRACT_DESCRIPTION, epilog=EXTRACT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("data", metavar="DATA", type=Path, help="dataset folder")
    e.add_argument("--teacher", required=True, choices=NAMES, help="which teacher")
    e.add_argument("--checkpoint", metavar="PATH",
                   help="the teacher's checkpoint (= --sam-checkpoint or --clip-checkpoint)")
    e.add_argument("--model", metavar="NAME", help="the teacher's architecture (= --sam-model or --clip-model)")
    e.add_argument("--sharpen", choices=["sam"], help="clip: average features inside SAM's masks (= --clip-sharpen)")
    e.add_argument("--downscale", metavar="F", type=float, default=1.0, help="divide image sizes by F (default: 1)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(e, TeacherOptions, title="teacher options")
    e.set_defaults(func=run_extract)

    c = sub.add_parser("compress", help="PCA-compress a feature cache to r channels",
                       description=COMPRESS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  featgs features compress scenes/room --teacher clip --dim 32")
    c.add_argument("data", metavar="DATA", type=Path, help="dataset folder")
    c.add_argument("--teacher", required=True, choices=NAMES, help="whose cache")
    c.add_argument("--dim", metavar="R", type=int, required=True, help="principal components to keep")
    c.add_argument("--downscale", metavar="F", type=float, default=1.0, help="the cache of images downscaled by F")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_compress)


def extract_options(args: argparse.Namespace) -> TeacherOptions:
    """The teacher options, with --checkpoint / --model / --sharpen given to the chosen teacher."""
    options = config_from_args(TeacherOptions, args)
    short = {"checkpoint": args.checkpoint, "model": args.model, "sharpen": args.sharpen}
    given = {k: v for k, v in short.items() if v is not None}
    owners = {"sam": {"checkpoint": "sam_checkpoint", "model": "sam_model"},
              "clip": {"checkpoint": "clip_checkpoint", "model": "clip_model", "sharpen": "clip_sharpen"}}
    owner = owners.get(args.teacher, {})
    wrong = [k for k in given if k not in owner]
    if wrong:
        raise FeatgsError(f"--{wrong[0]} does not apply to --teacher {args.teacher}")
    return dataclasses.replace(options, **{owner[k]: v for k, v in given.items()})


def run_extract(args: argparse.Namespace) -> int:
    from featgs.data import load_scene
    from featgs.device import resolve_device
    from featgs.distributed import PeerFailed, process_group
    from featgs.train.blocks import build_caches, make_blocks

    # under torchrun: view i is extracted by rank i % world (a plain run: one rank, no process group)
    with process_group(resolve_device("auto")) as ranks:
        try:
            scene = ranks.on_main(lambda: load_scene(args.data, downscale=args.downscale))  # writes any downscaled copies
            if not ranks.is_main:
                scene = load_scene(args.data, downscale=args.downscale)
            (block,) = make_blocks(scene, [args.teacher], extract_options(args), args.downscale)
            before = ranks.on_main(lambda: block.cache.meta)
            t0 = time.perf_counter()
            (computed,) = build_caches([block], scene.views, progress=not args.quiet and ranks.is_main, ranks=ranks)
            seconds = time.perf_counter() - t0
        except PeerFailed:  # the rank that failed says why
            return 2
    if not ranks.is_main:
        return 0
    meta = block.cache.meta
    if before is not None and before.get("key") != meta["key"]:
        print(f"replaced the cached features of another model or setting: {before.get('key')}")
    rate = f", {computed / seconds:.2f} images/s" if computed and seconds > 0 else ""
    on = f" on {ranks.world_size} ranks" if ranks.many else ""
    h, w = next(iter(meta["images"].values()))
    print(f"{meta['teacher']} features of {len(meta['images'])} images ({computed} computed{on}{rate}): "
          f"{meta['dim']} x {h} x {w}, model {meta['model_id']} -> {block.cache.folder}")
    return 0


def run_compress(args: argparse.Namespace) -> int:
    from featgs.teachers.cache import FeatureCache
    from featgs.teachers.compress import compress_cache

    folder = args.teacher if args.downscale == 1.0 else f"{args.teacher}@{args.downscale:g}x"
    report = compress_cache(FeatureCache(args.data, args.teacher, folder), args.dim, progress=not args.quiet)
    print(f"{report.source_dim} -> {report.dim} channels over {report.images} images: "
          f"{report.bytes_before / 2**20:.1f} MiB -> {report.bytes_after / 2**20:.1f} MiB "
          f"({report.bytes_before / report.bytes_after:.1f}x smaller), relative error {report.relative_error:.4f}, "
          f"mean cosine {report.mean_cosine:.4f}, variance kept {100 * report.variance_kept:.1f}% -> {report.folder}")
    return 0
