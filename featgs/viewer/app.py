"""The viewer: a viser server, the shared scene, and a :class:`ClientSession` per browser."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.query import FeatureField
from featgs.viewer import frames
from featgs.viewer.cameras import look_at_point, pose_of, up_direction
from featgs.viewer.config import ViewerConfig
from featgs.viewer.field import FieldAdapter
from featgs.viewer.session import ClientSession, SessionContext
from featgs.viewer.state import SharedScene
from featgs.viewer.worker import FairSlots

if TYPE_CHECKING:  # pragma: no cover  (viser is imported only when a server starts)
    import viser

__all__ = ["ViewerApp", "ViewerConfig"]  # ViewerConfig: also here, where it used to live


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


def check_address(host: str, port: int) -> None:
    """Raise a one-line FeatgsError unless ``host`` (IPv4 or IPv6) can be listened on.

    viser takes any OSError when it binds for a port in use: it tries the next port, a thousand
    times, and then waits for ever for a server that never started. So an address this machine
    does not have, or an IPv6 address where IPv6 is off, is checked here first; a port in use is
    left to viser (it moves to the next one).
    """
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise FeatgsError(f"--host {host}: not an address this machine can listen on ({e})") from None
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(sockaddr)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise FeatgsError(f"cannot listen on {host} port {port} ({e.strerror or e})") from None


def url_host(host: str) -> str:
    """How a browser on this machine names the listening ``host`` in a URL: a wildcard as the
    loopback address of its family, an IPv6 address in brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


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
        self.scene: SharedScene[FeatureField] = SharedScene(field, self.run_dir, save=self.adapter.save, max_undo=10)
        self.cameras = self.adapter.training_cameras(field)
        g = self.adapter.gaussians(field)
        self.can_query = self.adapter.can_query(field)
        self.can_prompt = self.adapter.can_prompt(field)
        self.can_segment = self.adapter.can_segment(field)
        self.can_edit = self.adapter.can_edit(field)
        offered = {"rgb": True, "depth": True, "features": g.feature_dim > 0, "relevancy": self.can_query,
                   "segmentation": self.can_segment}
        self.modes = [label for mode, label in frames.LABELS.items() if offered[mode]]
        self.render_slots = FairSlots(config.max_renders)
        self.colours: frames.FeatureColourTable[FeatureField] = frames.FeatureColourTable(self.adapter.gaussians)
        self.context = SessionContext(config=config, scene=self.scene, adapter=self.adapter,
                                      render_slots=self.render_slots, feature_colours=self.colours,
                                      modes=tuple(self.modes), can_query=self.can_query, can_prompt=self.can_prompt,
                                      can_segment=self.can_segment, can_edit=self.can_edit)
        self._sessions: Dict[int, ClientSession] = {}
        self._sessions_lock = threading.Lock()
        self._stopped = threading.Event()
        self.server: Optional["viser.ViserServer"] = None

    # -- shared helpers -----------------------------------------------------------------------
    def feature_colours(self, field: FeatureField, version: int) -> Optional[frames.FeatureColours]:
        """The feature PCA colours of ``field``: fitted once per scene, refitted after edits
        (``version`` is not needed: the field itself tells edits apart)."""
        return self.colours(field)

    def sessions(self) -> List[ClientSession]:
        with self._sessions_lock:
            return list(self._sessions.values())

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ViewerApp":
        """Listen and serve in viser's threads.

        Raises:
            FeatgsError: the configured host cannot be listened on (one line; see :func:`check_address`).
        """
        import viser

        cfg = self.config
        check_address(cfg.host, cfg.port)
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

    def _add_frustums(self, server: "viser.ViserServer", distance: float) -> None:
        scale = 0.06 * max(distance, 1e-3)
        for i, cam in enumerate(self.cameras):
            pose = pose_of(cam)
            handle = server.scene.add_camera_frustum(
                f"/training_cameras/{i:04d}", fov=pose.fov_y, aspect=pose.aspect, scale=scale,
                thickness=1.5, thickness_units="screen", color=(60, 60, 60), wxyz=pose.wxyz, position=pose.position,
            )

            async def clicked(event: "viser.SceneNodePointerEvent", cam: Camera = cam) -> None:
                # async, so viser runs it on its event loop before the scene click of the same
                # gesture (see ClientSession.frustum_clicked); the jump itself runs off the loop
                self._frustum_clicked(event.client_id, event.screen_pos, cam)

            handle.on_click(clicked)

    def _frustum_clicked(self, client_id: int, screen_pos: Tuple[float, float], camera: Camera) -> None:
        with self._sessions_lock:
            session = self._sessions.get(client_id)
        if session is None:
            return
        session.frustum_clicked(screen_pos)
        asyncio.get_running_loop().run_in_executor(None, self._jump, client_id, camera)

    def _jump(self, client_id: int, camera: Camera) -> None:
        """Move browser ``client_id``'s camera to ``camera`` (what a click on its frustum does)."""
        with self._sessions_lock:
            session = self._sessions.get(client_id)
        if session is None:
            return
        pose = pose_of(camera)
        cam = session.client.camera
        with session.client.atomic():
            cam.position = pose.position
            cam.wxyz = pose.wxyz
            cam.fov = pose.fov_y

    def _connected(self, client: "viser.ClientHandle") -> None:
        session = ClientSession(self.context, client)
        with self._sessions_lock:
            if self._stopped.is_set():
                session.close()
                return
            self._sessions[client.client_id] = session

    def _disconnected(self, client: "viser.ClientHandle") -> None:
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
        return f"http://{url_host(self.config.host)}:{self.port}"

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
