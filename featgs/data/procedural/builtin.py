"""Finding the built-in scene descriptions (``scenes/*.txt`` at the repository root)."""

from __future__ import annotations

from pathlib import Path

from featgs.errors import FeatgsError

SCENES_DIR = Path(__file__).resolve().parents[3] / "scenes"


def builtin_scene_names() -> list[str]:
    return sorted(p.stem for p in SCENES_DIR.glob("*.txt"))


def resolve_scene(name_or_path: str) -> Path:
    """A built-in scene's name (``tabletop``) or a path to a scene ``.txt`` file -> its path."""
    path = Path(name_or_path)
    if path.suffix == ".txt" or path.parent != Path("."):
        if not path.is_file():
            raise FeatgsError(f"{path}: scene file not found")
        return path
    builtin = SCENES_DIR / f"{name_or_path}.txt"
    if not builtin.is_file():
        names = ", ".join(builtin_scene_names()) or "none found"
        raise FeatgsError(f"unknown scene {name_or_path!r}; expected a built-in scene ({names}) or a path to a .txt scene file")
    return builtin
