"""The scene every browser sees and edits: one field, an undo history, one lock.

Edits never change a field in place: each gives a new field, and the old one goes on the
undo stack, so a render that started before an edit finishes on a consistent scene (it holds
its own reference) and the lock is held only to swap references, never while rendering.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Callable, Generic, List, Optional, Tuple, TypeVar

from featgs.errors import FeatgsError
from featgs.run import RunPaths

_EDITED = re.compile(r"^edited-(\d+)\.ply$")

FieldT = TypeVar("FieldT")  # the viewer's: a :class:`featgs.query.FeatureField`


class SharedScene(Generic[FieldT]):
    """A field, its version (bumped by each edit and undo) and the edits folder of the run.

    Args:
        field: the loaded field (in the viewer a :class:`featgs.query.FeatureField`; the scene
            only keeps fields and hands them to ``edit`` and ``save``).
        run_dir: the run folder; saved edits go to ``run_dir/edits/edited-<n>.ply``.
        save: writes a field to a PLY path (with its decoder beside it).
        max_undo: how many earlier fields to keep for undo.
    """

    def __init__(self, field: FieldT, run_dir: Path, *, save: Callable[[FieldT, Path], None], max_undo: int = 20) -> None:
        self._lock = threading.RLock()
        self._field = field
        self._history: List[FieldT] = []
        self._version = 0
        self._max_undo = max_undo
        self.run_dir = Path(run_dir)
        self._save = save
        self._listeners: List[Callable[[int], None]] = []

    def snapshot(self) -> Tuple[FieldT, int]:
        """The current field and its version (consistent with each other)."""
        with self._lock:
            return self._field, self._version

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    @property
    def can_undo(self) -> bool:
        with self._lock:
            return bool(self._history)

    def on_change(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(version)`` after each edit or undo (outside the lock)."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[int], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def apply(self, edit: Callable[[FieldT], FieldT], *, expect_version: Optional[int] = None) -> int:
        """Replace the field by ``edit(field)``; returns the new version.

        Args:
            expect_version: refuse (FeatgsError) when the scene changed since this version,
                so an edit made on a selection of an older scene is not applied to a newer one.
        """
        with self._lock:
            if expect_version is not None and expect_version != self._version:
                raise FeatgsError("the scene was edited since this selection was made; select again")
            new = edit(self._field)
            self._history.append(self._field)
            del self._history[:-self._max_undo]
            self._field = new
            self._version += 1
            version, listeners = self._version, list(self._listeners)
        self._notify(listeners, version)
        return version

    def undo(self) -> bool:
        """Go back to the field before the last edit; False when there is nothing to undo."""
        with self._lock:
            if not self._history:
                return False
            self._field = self._history.pop()
            self._version += 1
            version, listeners = self._version, list(self._listeners)
        self._notify(listeners, version)
        return True

    def save(self) -> Path:
        """Write the current field to ``RUN/edits/edited-<n>.ply`` (n: one past the highest there)."""
        with self._lock:
            folder = RunPaths(self.run_dir).edits
            folder.mkdir(parents=True, exist_ok=True)
            taken = [int(m.group(1)) for p in folder.iterdir() if (m := _EDITED.match(p.name))]
            path = folder / f"edited-{max(taken, default=0) + 1}.ply"
            self._save(self._field, path)
            return path

    @staticmethod
    def _notify(listeners, version: int) -> None:
        for cb in listeners:
            try:
                cb(version)
            except Exception:
                pass
