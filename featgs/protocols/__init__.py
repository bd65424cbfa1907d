"""The standard open-vocabulary benchmarks' protocols, scored on featgs runs (``featgs eval RUN
--protocol NAME --labels PATH``). The user brings the annotations; nothing is downloaded.

============  ===============================================================  ==============
protocol      annotations (``--labels``)                                       module
============  ===============================================================  ==============
lerf-ovs      per-frame JSON: objects with a category, a box and a polygon     ``lerf_ovs``
3d-ovs        ``segmentations/classes.txt`` and one mask per category and view  ``ovs3d``
replica-seg   label maps ``<view>.png`` with ``labels.json`` (default: the     ``replica_seg``
              run's dataset's own, as ``featgs eval``)
selection-3d  either of the first two: text selects Gaussians in 3D, rendered  ``selection3d``
              alone against the object's mask
============  ===============================================================  ==============

lerf-ovs and 3d-ovs also report the 3D-selection scores of their own queries (``selection_3d``).
Each module's docstring gives its formulas and the original script it follows.

A layer above ``train`` and ``query`` (it scores runs through :class:`featgs.query.FeatureField`);
only the commands import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from featgs.atomic import atomic_write_text
from featgs.errors import FeatgsError
from featgs.protocols.common import ProtocolRun, combine_scenes
from featgs.run import RUN_FILE

PROTOCOLS = ("lerf-ovs", "3d-ovs", "replica-seg", "selection-3d")
NEEDS_LABELS = {"lerf-ovs", "3d-ovs", "selection-3d"}
# the numbers a protocol's one-line summary and the multi-scene averages report
HEADLINE = {
    "lerf-ovs": ("localization_accuracy", "miou"),
    "3d-ovs": ("miou", "accuracy"),
    "replica-seg": ("miou", "accuracy"),
    "selection-3d": ("miou", "acc@0.25", "acc@0.5"),
}
# what counts one unit of a scene when all units of all scenes are pooled
SINGULAR = {"queries": "query", "views": "view"}
UNIT = {"lerf-ovs": "num_queries", "3d-ovs": "num_views", "replica-seg": "num_views", "selection-3d": "num_queries"}


def evaluate_scene(protocol: str, run: Path, labels: Optional[Path], *, progress: bool = True) -> dict:
    """The ``protocol`` result of one run on one scene's annotations (written to
    ``RUN/metrics-<protocol>.json``)."""
    from featgs.protocols import lerf_ovs, ovs3d, replica_seg, selection3d

    pr = ProtocolRun.open(run)
    if protocol == "lerf-ovs":
        out = lerf_ovs.evaluate(pr, labels, progress=progress)
    elif protocol == "3d-ovs":
        out = ovs3d.evaluate(pr, labels, progress=progress)
    elif protocol == "replica-seg":
        out = replica_seg.evaluate(pr, labels, progress=progress)
    else:
        out = selection3d.evaluate(pr, labels, progress=progress)
    out["labels"] = None if labels is None else str(labels)
    atomic_write_text(pr.run.paths.root / f"metrics-{protocol}.json", json.dumps(out, indent=2))
    return out


def scene_pairs(protocol: str, run: Path, labels: Optional[Path]) -> List[Tuple[str, Path, Optional[Path]]]:
    """(scene, run folder, annotations) to score: RUN itself, or, when RUN is a folder of run
    folders and --labels a folder of per-scene annotations (as ``lerf_ovs/label``), every
    scene that has both, by folder name."""
    run = Path(run)
    if (run / RUN_FILE).is_file() or labels is None or not run.is_dir():
        return [(run.name, run, labels)]
    runs = {p.name: p for p in sorted(run.iterdir()) if (p / RUN_FILE).is_file()}
    if not runs:
        return [(run.name, run, labels)]  # not a run: Run.open says so
    pairs = [(name, path, Path(labels) / name) for name, path in runs.items() if (Path(labels) / name).is_dir()]
    if not pairs:
        raise FeatgsError(f"{run}: none of its runs ({', '.join(runs)}) has a folder of the same name in {labels}; "
                          "expected RUN to be one run, or run folders named like the scenes of --labels")
    return pairs


def evaluate(protocol: str, run: Path, labels: Optional[Path] = None, *, progress: bool = True) -> dict:
    """Score one run, or several scenes' runs (see :func:`scene_pairs`), by ``protocol``.

    Returns ``{"protocol", "scenes": {name: result}, "per_query": ..., "per_scene": ...}`` and,
    at the top level, the headline numbers averaged per query (each query, or view, weighs
    the same; for one scene, that scene's numbers).
    """
    if protocol not in PROTOCOLS:
        raise FeatgsError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol in NEEDS_LABELS and labels is None:
        raise FeatgsError(f"--protocol {protocol} needs --labels: the folder of the benchmark's annotations")
    if labels is not None and not Path(labels).exists():
        raise FeatgsError(f"--labels {labels}: no such file or folder")
    scenes: Dict[str, dict] = {}
    for name, run_path, scene_labels in scene_pairs(protocol, run, labels):
        scenes[name] = evaluate_scene(protocol, run_path, scene_labels, progress=progress)
    keys = HEADLINE[protocol]
    unit = UNIT[protocol]
    both = combine_scenes({n: {**{k: s[k] for k in keys}, "num_queries": s[unit]} for n, s in scenes.items()}, keys)
    out = {"protocol": protocol, **{k: both["per_query"][k] for k in keys}, **both, "scenes": scenes}
    selections = {n: s["selection_3d"] for n, s in scenes.items() if "selection_3d" in s}
    if selections:
        sk = HEADLINE["selection-3d"]
        out["selection_3d"] = combine_scenes({n: {**{k: s[k] for k in sk}, "num_queries": s["num_queries"]}
                                              for n, s in selections.items()}, sk)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def format_result(result: dict) -> str:
    """Lines for the terminal: each scene, then the averages per query and per scene."""
    protocol = result["protocol"]
    keys = HEADLINE[protocol]
    unit = UNIT[protocol].removeprefix("num_")
    lines = []
    for name, s in result["scenes"].items():
        line = f"{protocol} {name}: {s[UNIT[protocol]]} {unit}  " + "  ".join(f"{k} {_fmt(s[k])}" for k in keys)
        if protocol == "3d-ovs":
            line += f"  (pooled as featgs eval: miou {_fmt(s['miou_pooled'])}  accuracy {_fmt(s['accuracy_pooled'])})"
        lines.append(line)
        if "selection_3d" in s:
            sel = s["selection_3d"]
            lines.append(f"  3D selection, same {sel['num_queries']} queries: " +
                         "  ".join(f"{k} {_fmt(sel[k])}" for k in HEADLINE["selection-3d"]))
    pq, ps = result["per_query"], result["per_scene"]
    lines.append(f"mean per {SINGULAR[unit]} ({pq['num_queries']} {unit}): " +
                 "  ".join(f"{k} {_fmt(pq[k])}" for k in keys))
    lines.append(f"mean per scene ({ps['num_scenes']} scenes): " + "  ".join(f"{k} {_fmt(ps[k])}" for k in keys))
    return "\n".join(lines)


__all__ = ["PROTOCOLS", "evaluate", "evaluate_scene", "format_result"]
