"""Make docs/query-edit.png: one test view of a demo run queried, clicked and edited.

    python docs/query_figure.py [RUN] [--view 6]     (RUN default: out/demo/run)

Panels: the render; the relevancy heat map of "cup"; the point prompt's mask where the
click lands on the lamp; the render after deleting "red mug"; after recolouring "blue book".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from featgs.pictures import contact_sheet, to_uint8
from featgs.query import Delete, FeatureField, Recolor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, default=Path("out/demo/run"))
    ap.add_argument("--view", type=int, default=6)
    ap.add_argument("--click", default="lamp", help="label whose most interior pixel is clicked")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "query-edit.png")
    args = ap.parse_args()
    field = FeatureField.load(args.run)
    cam = field.camera(args.view)
    rgb = field.render(cam)

    # click the pixel deepest inside the rendered mask of the query for the clicked label
    inside = field.mask(cam, field.query(args.click)).numpy()
    if not inside.any():
        raise SystemExit(f"{args.click!r} is not visible in test view {args.view}")
    from scipy import ndimage

    y, x = np.unravel_index(ndimage.distance_transform_edt(inside).argmax(), inside.shape)
    mask, _ = field.prompt(cam, points=[[x + 0.5, y + 0.5]])
    clicked = rgb.clone()
    clicked[~mask] *= 0.35
    clicked[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = torch.tensor([1.0, 0.0, 1.0])

    panels = [
        (rgb, "render"),
        (field.render(cam, mode="relevancy", text="cup"), 'relevancy: "cup"'),
        (clicked, f"click on the {args.click}"),
        (field.edit(field.query("red mug"), Delete()).render(cam), 'delete "red mug"'),
        (field.edit(field.query("blue book"), Recolor((0.9, 0.5, 0.1))).render(cam), 'recolour "blue book"'),
    ]
    sheet = contact_sheet([to_uint8(p) for p, _ in panels], [t for _, t in panels], scale=3,
                          footer=f"featgs demo run, test view {args.view}")
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
