"""From photos or a video to a posed dataset: structure from motion with pycolmap.

``process_input(SOURCE, OUT, ProcessConfig())`` stages the inputs (:mod:`.inputs`), runs
SIFT extraction, matching and incremental mapping (:mod:`.sfm`), undistorts to PINHOLE
(:mod:`.undistort`) and writes a COLMAP dataset folder with downscaled copies
(:mod:`.pyramid`) that ``featgs train`` reads; :mod:`.summary` says what it did and
:mod:`.align` measures recovered cameras against known ones.

Part of the base layer: it imports only ``data``, ``errors``, ``atomic`` and ``configargs``.
"""

from featgs.process.align import CameraErrors, compare_cameras, umeyama
from featgs.process.config import ProcessConfig
from featgs.process.pipeline import SUMMARY_FILE, process_input
from featgs.process.summary import ProcessSummary, format_summary

__all__ = ["CameraErrors", "ProcessConfig", "ProcessSummary", "SUMMARY_FILE", "compare_cameras", "format_summary",
           "process_input", "umeyama"]
