"""Structure from motion through pycolmap: SIFT features, matching, incremental mapping.

pycolmap runs COLMAP's own pipeline in-process; a database file holds features and matches
between the stages. The calls here run on the CPU unless pycolmap was built with CUDA
(``Device.auto``), with ``ProcessConfig.threads`` threads each.

Progress: feature extraction runs in chunks of images (one pycolmap call each, all in one
database) so a bar can follow it; mapping reports each image it registers. Matching is one
call. COLMAP's own log lines are silenced while these run (they go to stderr through glog,
hundreds of them per run); failures come back as one-line errors instead.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from tqdm.auto import tqdm

from featgs.errors import FeatgsError
from featgs.process.config import ProcessConfig

# Fewer chunks than this many images each would spend more on starting pycolmap's extractor
# (opening the database, a thread pool) than the bar is worth.
MIN_CHUNK_PER_THREAD = 4
BAR_STEPS = 50


@dataclass
class Reconstructions:
    """What incremental mapping made: ``models`` (pycolmap Reconstructions, largest first,
    by registered images) and the matcher used."""

    models: list
    matcher: str

    @property
    def best(self):
        return self.models[0]


@contextlib.contextmanager
def colmap_log_silenced() -> Iterator[None]:
    """Raise glog's threshold to FATAL while pycolmap runs, and put it back after: COLMAP logs
    every image and every bundle adjustment, and its errors are reported by our exceptions."""
    import pycolmap

    before = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 3
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = before


def _explained(error: Exception) -> str:
    return " ".join(str(error).split())[:200] or error.__class__.__name__


def extract_features(database: Path, folder: Path, names: Sequence[str], *, one_camera: bool,
                     config: ProcessConfig, progress: bool = True) -> None:
    """SIFT keypoints and descriptors of the images ``names`` in ``folder`` into ``database``.

    Args:
        one_camera: all images share one camera (one set of intrinsics); else one camera each.
    """
    import pycolmap

    threads = config.num_threads()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.resolve_camera_model(labels=False)  # the pipeline resolves 'auto' first
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = threads
    options.max_image_size = config.max_size
    options.sift.max_num_features = config.max_features
    mode = pycolmap.CameraMode.SINGLE if one_camera else pycolmap.CameraMode.PER_IMAGE
    chunk = max(MIN_CHUNK_PER_THREAD * threads, math.ceil(len(names) / BAR_STEPS))
    with tqdm(total=len(names), desc="SIFT features", unit="image", disable=not progress) as bar:
        for start in range(0, len(names), chunk):
            part = list(names[start:start + chunk])
            try:
                pycolmap.extract_features(database, folder, image_names=part, camera_mode=mode, reader_options=reader,
                                          extraction_options=options, device=pycolmap.Device.auto)
            except (RuntimeError, ValueError) as e:
                raise FeatgsError(f"{folder}: SIFT feature extraction failed ({_explained(e)}); expected readable "
                                  "JPEG or PNG images") from None
            if one_camera and start == 0:
                # Later chunks join the camera the first made (SINGLE would make one per call).
                db = pycolmap.Database.open(database)
                try:
                    reader.existing_camera_id = db.read_all_cameras()[0].camera_id
                finally:
                    db.close()
            bar.update(len(part))


def keypoint_counts(database: Path) -> dict[str, int]:
    """Image name -> number of SIFT keypoints found in it."""
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        return {im.name: db.num_keypoints_for_image(im.image_id) for im in db.read_all_images()}
    finally:
        db.close()


def match_features(database: Path, matcher: str, *, config: ProcessConfig, progress: bool = True) -> None:
    """Match SIFT features between the image pairs ``matcher`` proposes (exhaustive,
    sequential or vocab; resolved by :meth:`ProcessConfig.resolve_matcher`) and verify them
    geometrically (two-view geometry by RANSAC).

    With a vocabulary tree, matching runs in a child process: pycolmap reads the tree in a
    worker thread, where a file it cannot read aborts the process (std::terminate) instead
    of raising; the child's death becomes a one-line error here, and our temporary folder
    is still cleaned up.
    """
    with tqdm(total=1, desc=f"{matcher} matching", unit="pass", disable=not progress) as bar:
        if config.vocab_tree and matcher in ("vocab", "sequential"):
            _match_in_child(database, matcher, config)
        else:
            _match(database, matcher, config)
        bar.update()


def _match_in_child(database: Path, matcher: str, config: ProcessConfig) -> None:
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_match_child, args=(str(database), matcher, config))
    child.start()
    try:
        child.join()
    except BaseException:  # Ctrl-C: do not leave the child matching
        child.terminate()
        child.join()
        raise
    if child.exitcode != 0:
        raise FeatgsError(f"{config.vocab_tree}: {matcher} matching with this vocabulary tree failed (pycolmap "
                          f"stopped with exit code {child.exitcode}); expected a COLMAP vocabulary tree built for "
                          "SIFT features (or use --matcher exhaustive or sequential without --vocab-tree)")


def _match_child(database: str, matcher: str, config: ProcessConfig) -> None:
    """The child process of :func:`_match_in_child` (exit code 1 on a Python error)."""
    import os
    import sys

    # An abort prints a stack trace; the parent's one-line error says what happened.
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    with colmap_log_silenced():
        try:
            _match(Path(database), matcher, config)
        except FeatgsError:
            sys.exit(1)


def _match(database: Path, matcher: str, config: ProcessConfig) -> None:
    import pycolmap

    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = config.num_threads()
    try:
        if matcher == "exhaustive":
            pycolmap.match_exhaustive(database, matching_options=options, device=pycolmap.Device.auto)
        elif matcher == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = config.overlap
            pairing.num_threads = config.num_threads()
            if config.vocab_tree:  # closes loops (back to where a walk started) by image similarity
                pairing.loop_detection = True
                pairing.vocab_tree_path = str(config.vocab_tree)
            pycolmap.match_sequential(database, matching_options=options, pairing_options=pairing,
                                      device=pycolmap.Device.auto)
        elif matcher == "vocab":
            pairing = pycolmap.VocabTreePairingOptions()
            pairing.vocab_tree_path = str(config.vocab_tree)
            pairing.num_threads = config.num_threads()
            pycolmap.match_vocabtree(database, matching_options=options, pairing_options=pairing,
                                     device=pycolmap.Device.auto)
        else:
            raise ValueError(f"unknown matcher {matcher!r}")
    except (RuntimeError, ValueError, OSError) as e:
        if config.vocab_tree and matcher in ("vocab", "sequential"):
            raise FeatgsError(f"{config.vocab_tree}: {matcher} matching failed ({_explained(e)}); expected a COLMAP "
                              "vocabulary tree file for --vocab-tree") from None
        raise FeatgsError(f"{database}: {matcher} matching failed ({_explained(e)})") from None


def map_images(database: Path, folder: Path, output: Path, num_images: int, *, config: ProcessConfig,
               progress: bool = True) -> list:
    """Incremental mapping (COLMAP's mapper) of the matched images; the models it made,
    largest first (by registered images). ``output`` is an empty folder for its files."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = config.num_threads()
    options.random_seed = config.seed
    # COLMAP drops models under 10 images: a small capture (we accept 3) would lose its only
    # one, and a poor one would be reported as no model rather than as how few images it posed.
    options.min_model_size = 3
    output.mkdir(parents=True, exist_ok=True)
    with tqdm(total=num_images, desc="mapping", unit="image", disable=not progress) as bar:
        def registered() -> None:
            if bar.n < bar.total:
                bar.update()

        try:
            models = pycolmap.incremental_mapping(database, folder, output, options, next_image_callback=registered,
                                                  initial_image_pair_callback=lambda: bar.update(min(2, bar.total - bar.n)))
        except (RuntimeError, ValueError) as e:
            raise FeatgsError(f"{folder}: incremental mapping failed ({_explained(e)}); expected overlapping photos "
                              "of a static, textured scene") from None
    return sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)


def registered_names(model) -> list[str]:
    """Names of the images a pycolmap Reconstruction registered (posed)."""
    return sorted(model.images[i].name for i in model.reg_image_ids())


def mean_reprojection_error(model) -> Optional[float]:
    """Mean reprojection error of the model's 3D points in pixels (None without points)."""
    return float(model.compute_mean_reprojection_error()) if model.num_points3D() else None
