"""Query latency up to 1M Gaussians, and relevancy rendering against full-feature rendering.

    python benchmarks/query_scale.py [RUN] [--sizes 52523,250000,1000000] [--repeats 3]

RUN (default /tmp/q/demo/run, made by ``featgs demo --out /tmp/q/demo``) gives the text
encoder, the decoder, the label names and the cameras. Larger fields are the run's Gaussians
repeated with their centres jittered by one radius and their features by 5% of their spread,
so that selections have the run's shape and size ratios (a query for the table picks about a
quarter of the field).

1. Query latency per size: a new text with the raw threshold (the embedding included), the
   per-Gaussian relevancy alone, a text asked before (a field keeps its selections), and the
   cleaning a query adds by default (floaters and hidden Gaussians, featgs.query.clean: its
   cost grows with the selection, so it is timed for the largest object and a small one).
2. Relevancy maps per view: the per-Gaussian relevancy rendered as one channel (what
   ``FeatureField.relevancy_map`` does) against rendering the d-dim stored features and then
   decoding every pixel and taking its relevancy (the approach of Feature 3DGS and LERF), and,
   at the run's size, against rendering the decoded D-dim features (no speed-up decoder).

Writes benchmarks/results/query-scale-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, print_table, save_results, time_it  # noqa: E402

from featgs.gaussians import Gaussians  # noqa: E402
from featgs.query import FeatureField, QueryConfig  # noqa: E402
from featgs.query.clean import radii  # noqa: E402
from featgs.query.relevancy import DEFAULT_NEGATIVES, pairwise_relevancy  # noqa: E402
from featgs.render import render  # noqa: E402

PROBE = "table"  # the largest object: about a quarter of the field
SMALL = "red mug"  # a small one: under 1%


def grown(field: FeatureField, n: int, seed: int = 0) -> FeatureField:
    """``field`` with ``n`` Gaussians: its own repeated, jittered (see the module docstring)."""
    g = field.gaussians
    if n == len(g):
        return field
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(n) % len(g)
    params = {k: v[index].clone() for k, v in g.params().items()}
    extra = index >= len(g)  # the originals stay where they are
    r = radii(g)[index][extra]
    params["means"][extra] += torch.randn(int(extra.sum()), 3, generator=gen) * r[:, None]
    spread = g.features.std(0)
    params["features"][extra] += 0.05 * spread * torch.randn(int(extra.sum()), g.feature_dim, generator=gen)
    big = Gaussians.from_params(params, decoder=g.decoder)
    return dataclasses.replace(field, gaussians=big, _texts=dict(field._texts))


def decoded_relevancy_map(field: FeatureField, camera, text: str) -> torch.Tensor:
    """[H, W] relevancy of each pixel's rendered feature: render d dims, decode, compare."""
    g = field.gaussians
    out = render(g.with_features(g.features, None), camera, features=True, sh_degree=0)
    f = out.features / out.alpha.clamp_min(1e-10)
    cos = field.space.cosine_of(f.reshape(-1, g.feature_dim), field.embed([text, *DEFAULT_NEGATIVES]))
    return pairwise_relevancy(cos[:, 0], cos[:, 1:], 0.1).reshape(camera.height, camera.width)


def full_feature_relevancy_map(field: FeatureField, camera, text: str, decoded: torch.Tensor) -> torch.Tensor:
    """[H, W] the same from a render of the D-dim decoded features ``decoded`` [N, D]."""
    g = field.gaussians
    out = render(g.with_features(decoded, None), camera, features=True, sh_degree=0)
    f = torch.nn.functional.normalize(out.features.reshape(-1, decoded.shape[1]), dim=1)
    cos = f @ torch.nn.functional.normalize(field.embed([text, *DEFAULT_NEGATIVES]), dim=1).T
    return pairwise_relevancy(cos[:, 0], cos[:, 1:], 0.1).reshape(camera.height, camera.width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, default=Path("/tmp/q/demo/run"))
    ap.add_argument("--sizes", default="", help="field sizes, comma-separated (default: the run's, 250000, 1000000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolutions", default="128,256,512", help="relevancy-map image sizes (square)")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = FeatureField.load(args.run)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [base.num_gaussians, 250_000, 1_000_000]
    resolutions = [int(s) for s in args.resolutions.split(",")]
    base.embed([PROBE, *DEFAULT_NEGATIVES, *base.label_names])
    view = base.camera(0)

    query_rows, render_rows, results = [], [], {"query": [], "relevancy_map": []}
    for n in sizes:
        field = grown(base, n)
        field.space  # noqa: B018 - built once per field, as on load
        timed = functools.partial(time_it, device=field.gaussians.device, repeats=args.repeats)
        counter = iter(range(10**6))
        new_text = timed(lambda: field.query(f"the {PROBE} {next(counter)}", config=QueryConfig(clean=False)))
        relevancy = timed(lambda: field.relevancy(PROBE))
        asked_before = timed(lambda: field.query(PROBE))
        raw, raw_small = (field.query(t, config=QueryConfig(clean=False)) for t in (PROBE, SMALL))
        cleaning = timed(lambda: field.clean(raw))
        cleaning_small = timed(lambda: field.clean(raw_small))
        selected, selected_small = len(field.query(PROBE)), len(field.query(SMALL))
        results["query"].append(dict(num_gaussians=n, new_text=new_text, relevancy=relevancy, asked_before=asked_before,
                                     selected=selected, cleaning=cleaning, selected_small=selected_small,
                                     cleaning_small=cleaning_small))
        query_rows.append([f"{n:,}", f"{1000 * new_text:.0f}", f"{1000 * relevancy:.0f}", f"{1000 * asked_before:.1f}",
                           f"{selected:,}", f"{1000 * cleaning:.0f}", f"{selected_small:,}",
                           f"{1000 * cleaning_small:.0f}"])
        print(f"  queries on {n:,} Gaussians: done", flush=True)

        for res in resolutions if n == sizes[0] else resolutions[1:2]:
            cam = view.scaled(res / max(view.width, view.height))
            scalar = timed(lambda: field.relevancy_map(cam, PROBE))
            low = timed(lambda: decoded_relevancy_map(field, cam, PROBE))
            row = dict(num_gaussians=n, size=res, scalar=scalar, decoded=low, full=None)
            if n == sizes[0]:
                decoded = field.space.decode(field.gaussians.features)
                row["full"] = timed(lambda: full_feature_relevancy_map(field, cam, PROBE, decoded))
                row["full_dim"] = int(decoded.shape[1])
            results["relevancy_map"].append(row)
            render_rows.append([f"{n:,}", f"{res}x{res}", f"{1 / scalar:.1f}", f"{1 / low:.1f}",
                                f"{low / scalar:.1f}x",
                                "-" if row["full"] is None else f"{1 / row['full']:.2f}",
                                "-" if row["full"] is None else f"{row['full'] / scalar:.1f}x"])
            print(f"  relevancy maps on {n:,} Gaussians at {res}: done", flush=True)

    d, D = base.gaussians.feature_dim, base.space.dim
    header = (f"query and relevancy-map scaling from {args.run} (encoder {base.model_id}, d={d} stored -> D={D} "
              f"decoded); {device_name(base.gaussians.device)}; medians of {args.repeats}")
    q_table = print_table(["Gaussians", "new text ms", "relevancy only ms", "asked before ms", f"{PROBE}: selected",
                           "cleaning ms", f"{SMALL}: selected", "cleaning ms"], query_rows)
    r_table = print_table(["Gaussians", "image", "scalar FPS", f"d={d} render+decode FPS", "speed-up",
                           f"D={D} render FPS", "speed-up"], render_rows)
    save_results("query-scale", {"device_kind": base.gaussians.device.type, "device": device_name(base.gaussians.device),
                                 "run": str(args.run), "feature_dim": d, "decoded_dim": D, **results},
                 "\n\n".join([header, q_table, r_table]))


if __name__ == "__main__":
    main()
