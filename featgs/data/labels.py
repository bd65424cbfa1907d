"""``labels.json``: the names of the label ids in a dataset's label maps."""

from __future__ import annotations

from pathlib import Path

from featgs.data.jsonfile import read_json_object
from featgs.errors import FeatgsError

LABELS_FILE = "labels.json"
EXPECTED = 'a labels.json object mapping label ids to names, e.g. {"0": "floor", "1": "wall"}'


def read_label_names(path: Path) -> dict[int, str]:
    """``{"0": "floor", ...}`` -> ``{0: "floor", ...}`` (sorted by id)."""
    data = read_json_object(path, EXPECTED)
    out: dict[int, str] = {}
    for key, name in data.items():
        try:
            label = int(key)
        except ValueError:
            raise FeatgsError(f"{path}: key {key!r} is not an integer label id; expected {EXPECTED}") from None
        if label < 0 or not isinstance(name, str):
            raise FeatgsError(f"{path}: entry {key!r}: {name!r}; expected {EXPECTED}")
        out[label] = name
    return dict(sorted(out.items()))


def label_names_beside(root: Path) -> dict[int, str] | None:
    """The label names in ``root/labels.json``, or None if there is no such file."""
    path = root / LABELS_FILE
    return read_label_names(path) if path.is_file() else None
