"""How ``featgs process`` turns photos or a video into a posed dataset (one flag per field)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from featgs.configargs import check_ranges
from featgs.errors import FeatgsError

MATCHERS = ("auto", "exhaustive", "sequential", "vocab")
CAMERA_MODES = ("auto", "single", "per-image")
# Models the mapper may fit; the radial ones are undistorted to PINHOLE afterwards. 'auto' is
# SIMPLE_RADIAL, or PINHOLE when the input has label maps (which undistortion cannot resample).
CAMERA_MODELS = ("auto", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE")
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")

# Exhaustive matching compares every pair: n (n - 1) / 2 pairs, 4950 at 100 images, which
# takes minutes on a CPU; beyond that, neighbours in file order (and a vocabulary tree when
# one is given) find the overlapping pairs at a cost linear in n.
EXHAUSTIVE_MAX_IMAGES = 100


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ProcessConfig:
    matcher: str = _f("auto", "which image pairs SIFT matching compares: 'exhaustive' (every pair), 'sequential' "
                      "(neighbours in file / frame order), 'vocab' (similar images by a vocabulary tree, "
                      "--vocab-tree) or 'auto' (sequential for a video; exhaustive for up to "
                      f"{EXHAUSTIVE_MAX_IMAGES} photos, beyond that vocab when --vocab-tree is given, else "
                      "sequential)", choices=list(MATCHERS))
    vocab_tree: Optional[str] = _f(None, "vocabulary tree file for --matcher vocab, and for loop closure in "
                                   "sequential matching (COLMAP 3.12+ faiss format, a local file; nothing is "
                                   "downloaded)")
    max_size: int = _f(1600, "longest image side in pixels: larger photos and frames are resized before SIFT "
                       "(the dataset's images/ hold them at this size)", min=32)
    fps: float = _f(2.0, "frames per second sampled from a video", above=0.0, max=240.0)
    camera: str = _f("auto", "camera intrinsics: 'single' (one camera for all images), 'per-image', or 'auto' "
                     "(single for a video, and for photos of one size whose EXIF names one camera and focal "
                     "length; else per image)", choices=list(CAMERA_MODES))
    camera_model: str = _f("auto", "COLMAP camera model the mapper fits; radial models are undistorted "
                           "to PINHOLE; 'auto': SIMPLE_RADIAL, or PINHOLE when INPUT has label maps (which "
                           "cannot be undistorted)", choices=list(CAMERA_MODELS))
    max_features: int = _f(8192, "most SIFT features per image", min=64)
    overlap: int = _f(10, "sequential matching: how many following images each image is matched with", min=1)
    threads: int = _f(0, "CPU threads of feature extraction, matching and mapping (0: one per core)", min=0)
    seed: int = _f(0, "random seed of the mapper's RANSAC and initialisation", min=0)

    def __post_init__(self) -> None:
        check_ranges(self)

    def num_threads(self) -> int:
        """Threads to give pycolmap: ``threads``, or one per core."""
        return self.threads or (os.cpu_count() or 1)

    def resolve_camera_model(self, labels: bool) -> str:
        """The camera model the mapper fits: ``camera_model``, with 'auto' resolved (PINHOLE
        when the input has label maps, so no undistortion is needed; else SIMPLE_RADIAL)."""
        if self.camera_model != "auto":
            return self.camera_model
        return "PINHOLE" if labels else "SIMPLE_RADIAL"

    def resolve_matcher(self, num_images: int, video: bool) -> str:
        """The matcher to use for ``num_images`` images (from a video or not): 'auto' resolved;
        a one-line error for 'vocab' without a usable --vocab-tree."""
        matcher = self.matcher
        if matcher == "auto":
            if video:
                matcher = "sequential"
            elif num_images <= EXHAUSTIVE_MAX_IMAGES:
                matcher = "exhaustive"
            else:
                matcher = "vocab" if self.vocab_tree else "sequential"
        if matcher == "vocab":
            if not self.vocab_tree:
                raise FeatgsError("--matcher vocab: needs --vocab-tree PATH, a COLMAP vocabulary tree file "
                                  "(nothing is downloaded); or use --matcher sequential or exhaustive")
            check_vocab_tree(self.vocab_tree)
        elif self.vocab_tree:
            check_vocab_tree(self.vocab_tree)  # sequential matching uses it to close loops
        return matcher


# (descriptor dimension, embedding dimension) of the indexes COLMAP builds: SIFT, ALIKED.
_TREE_DIMS = ((128, 64), (32, 8))


def check_vocab_tree(path: str) -> None:
    """A one-line error unless ``path`` starts like a vocabulary tree of COLMAP 3.12+ (a
    version, the descriptor and embedding dimensions, then a faiss index). pycolmap reads
    the file in a worker thread, where a bad file aborts the whole process instead of
    raising; this catches the common cases (a missing file, a legacy flann tree) first."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        raise FeatgsError(f"{path}: vocabulary tree file not found; expected a COLMAP vocabulary tree file for "
                          "--vocab-tree") from None
    except OSError as e:
        raise FeatgsError(f"{path}: cannot read the vocabulary tree ({e.strerror or e.__class__.__name__})") from None
    version, desc_dim, embedding_dim = struct.unpack("<3i", head) if len(head) == 12 else (0, 0, 0)
    if version not in (1, 2) or (desc_dim, embedding_dim) not in _TREE_DIMS:
        raise FeatgsError(f"{path}: not a COLMAP vocabulary tree of the faiss format (COLMAP 3.12 and later); "
                          "expected such a file (a legacy flann tree needs COLMAP's vocab_tree_upgrader)")
