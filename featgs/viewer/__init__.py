"""The browser viewer (``featgs view``): a viser app over a run's feature field.

Layout: :mod:`~featgs.viewer.app` (the server and its browsers), :mod:`~featgs.viewer.session`
(one browser: GUI, selection, render thread), :mod:`~featgs.viewer.worker` (latest-request-wins
render thread), :mod:`~featgs.viewer.frames` (the render modes of :mod:`featgs.query.modes`, and overlays), :mod:`~featgs.viewer.state`
(the shared, lock-guarded scene with undo), :mod:`~featgs.viewer.field` (the calls into
:class:`featgs.query.FeatureField`), :mod:`~featgs.viewer.cameras` (browser camera <-> Camera),
:mod:`~featgs.viewer.config` (the settings). A session sees the viewer through a small
:class:`~featgs.viewer.session.SessionContext`, not the app. viser is imported only when a
server starts.
"""

from featgs.viewer.app import ViewerApp
from featgs.viewer.config import ViewerConfig

__all__ = ["ViewerApp", "ViewerConfig"]
