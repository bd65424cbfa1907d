"""The viewer: a viser server, the shared scene, and a :class:`ClientSession` per browser."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.viewer import frames
from featgs.viewer.cameras import look_at_point, pose_of, up_direction
from featgs.viewer.field import FieldAdapter
from featgs.viewer.session import ClientSession
from featgs.viewer.state import SharedScene
from featgs.viewer.worker import FairSlots


@dataclass(frozen=True)
class ViewerConfig:
    """How the viewer serves and renders.

    Attributes:
        host, port: where to listen (port 0: any free port; a taken port moves to the next).
        still_size: long side in pixels of the view drawn once the camera rests.
        moving_size: long side while the camera moves.
        still_delay: seconds without camera motion before the still view is drawn.
        max_renders: renders running at once over all browsers (the rest wait their turn).
        threshold: initial query threshold (the slider).
        frustums: show the training cameras (click one to jump to it).
        jpeg_quality: of the moving frames (still frames go as PNG).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    still_size: int = 256
    moving_size: int = 128
    still_delay: float = 0.3
    max_renders: int = 2
    threshold: float = 0.5
    frustums: bool = True
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise FeatgsError(f"--port must be in 0..65535, got {self.port}")
        for name in ("still_size", "moving_size"):
            if not 16 <= getattr(self, name) <= 4096:
                raise FeatgsError(f"--{name.replace('_', '-')} must be in 16..4096 pixels, got {getattr(self, name)}")
        if self.max_renders < 1:
            raise FeatgsError(f"max_renders must be >= 1, got {self.max_renders}")
        if not 0.0 < self.threshold < 1.0:
            raise FeatgsError(f"--threshold must be in (0, 1), got {self.threshold}")


def _focus(cameras: List[Camera]) -> np.ndarray:
    """The point closest (least squares) to all the cameras' optical axes: what they look at."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c in cameras:
        m = c.camtoworld.numpy()
        d = m[:3, 2] / np.linalg.norm(m[:3, 2])
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ m[:3, 3]
    try:
        p = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        p = np.mean([c.center.numpy() for c in cameras], axis=0)
    return p if np.all(np.isfinite(p)) else np.zeros(3)


class ViewerApp:
    """Serve one run folder to any number of browsers.

    Use as ``app = ViewerApp(run, config); app.start(); ...; app.stop()`` or ``app.serve()``
    (blocks until Ctrl-C or :meth:`stop`).
    """

    def __init__(self, run_dir: Path, config: ViewerConfig = ViewerConfig(), *, adapter: Optional[FieldAdapter] = None,
                 progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.adapter = adapter or FieldAdapter()
        field = self.adapter.load(self.run_dir)
        self.scene = SharedScene(field, self.run_dir, save=self.adapter.save, max_undo=10)
        self.cameras = self.adapter.training_cameras(field)
        g = self.adapter.gaussians(field)
        self.can_query = self.adapter.can_query(field)
        self.can_prompt = self.adapter.can_prompt(field)
        self.can_segment = self.adapter.can_segment(field)
        self.can_edit = self.adapter.can_edit(field)
        self.modes = [m for m in frames.MODES
                      if m in ("RGB", "Depth")
                      or (m == "Features (PCA)" and g.feature_dim > 0)
                      or (m == "Relevancy" and self.can_query)
                      or (m == "Segmentation" and self.can_segment)]
        self.render_slots = FairSlots(config.max_renders)
        self._sessions: Dict[int, ClientSession] = {}
        self._sessions_lock = threading.Lock()
        self._colours_lock = threading.Lock()
        self._colours: tuple = (None, None)  # (field, FeatureColours)
        self._stopped = threading.Event()
        self.server = None

    # -- shared helpers -----------------------------------------------------------------------
    def feature_colours(self, field, version: int):
        """The feature PCA colours of ``field``: fitted once per scene, refitted after edits."""
        g = self.adapter.gaussians(field)
        if g.feature_dim == 0 or len(g) == 0:
            return None
        with self._colours_lock:
            if self._colours[0] is field:
                return self._colours[1]
            colours = frames.FeatureColours(g)
            self._colours = (field, colours)
            return colours

    def sessions(self) -> List[ClientSession]:
        with self._sessions_lock:
            return list(self._sessions.values())

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ViewerApp":
        import viser

        cfg = self.config
        self.server = server = viser.ViserServer(host=cfg.host, port=cfg.port, label="featgs", verbose=False)
        server.gui.configure_theme(control_width="large", show_logo=False)
        if self.cameras:
            up = up_direction(self.cameras)
            server.scene.set_up_direction(tuple(float(v) for v in up))
            focus = _focus(self.cameras)
            first = self.cameras[0]
            dist = float(np.linalg.norm(focus - first.center.numpy()))
            pose = pose_of(first)
            server.initial_camera.position = pose.position
            server.initial_camera.look_at = tuple(look_at_point(first, max(dist, 1e-3)))
            server.initial_camera.up = tuple(float(v) for v in up)
            server.initial_camera.fov = pose.fov_y
            if cfg.frustums:
                self._add_frustums(server, dist)
        server.on_client_connect(self._connected)
        server.on_client_disconnect(self._disconnected)
        self.scene.on_change(self._scene_changed)
        return self

    def _add_frustums(self, server, distance: float) -> None:
        scale = 0.06 * max(distance, 1e-3)
        for i, cam in enumerate(self.cameras):
            pose = pose_of(cam)
            handle = server.scene.add_camera_frustum(
                f"/training_cameras/{i:04d}", fov=pose.fov_y, aspect=pose.aspect, scale=scale,
                thickness=1.5, thickness_units="screen", color=(60, 60, 60), wxyz=pose.wxyz, position=pose.position,
            )
            handle.on_click(lambda event, cam=cam: self._jump(event.client_id, cam))

    def _jump(self, client_id: int, camera: Camera) -> None:
        with self._sessions_lock:
            session = self._sessions.get(client_id)
        if session is None:
            return
        session.last_jump = time.monotonic()
        pose = pose_of(camera)
        cam = session.client.camera
        with session.client.atomic():
            cam.position = pose.position
            cam.wxyz = pose.wxyz
            cam.fov = pose.fov_y

    def _connected(self, client) -> None:
        session = ClientSession(self, client)
        with self._sessions_lock:
            if self._stopped.is_set():
                session.close()
                return
            self._sessions[client.client_id] = session

    def _disconnected(self, client) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(client.client_id, None)
        if session is not None:
            session.close()

    def _scene_changed(self, version: int) -> None:
        for s in self.sessions():
            s.scene_changed(version)

    @property
    def port(self) -> int:
        return self.server.get_port() if self.server is not None else self.config.port

    @property
    def url(self) -> str:
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{shown}:{self.port}"

    def stop(self) -> None:
        """Stop serving: render threads first, then the server. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()
        if self.server is not None:
            self.server.stop()

    def serve(self, *, duration: Optional[float] = None) -> None:
        """Block until Ctrl-C, :meth:`stop` or ``duration`` seconds; then stop."""
        if self.server is None:
            self.start()
        try:
            deadline = None if duration is None else time.monotonic() + duration
            while not self._stopped.is_set():
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0:
                    break
                self._stopped.wait(left)
        finally:
            self.stop()
