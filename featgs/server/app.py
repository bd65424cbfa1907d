"""The HTTP JSON API over one :class:`~featgs.query.FeatureField` (standard library only).

Every request body is validated against its schema (:mod:`featgs.server.schema`) before the
field is touched; bad input gets a 4xx answer with ``{"error": message}``, and an unexpected
failure a 500 with the same shape, while the server keeps serving. The field (and the
renderer under it) runs one operation at a time under its own lock. No request
names a path: edits are saved as ``RUN/edits/NAME.ply`` with a validated NAME, or returned.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import tempfile
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from featgs import __version__
from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.pictures import to_uint8
from featgs.query import FeatureField, PromptConfig, QueryConfig, Selection
from featgs.query.edit import make_edit
from featgs.run import EDITS_FOLDER
from featgs.server.schema import MAX_SIDE, REQUESTS, SchemaError, openapi, validate

MAX_BODY = 8 << 20  # bytes of one request body (a million ids fit)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

Response = Tuple[int, str, bytes]


class HTTPError(Exception):
    """An answer other than 200, with a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class FieldServer(ThreadingHTTPServer):
    """Serves one field. ``FieldServer(field, ("127.0.0.1", 0))`` picks a free port (see ``url``).

    Attributes:
        field: what is served; never modified (edits make new fields).
        lock: held while an edit is saved into RUN/edits/.
        quiet: no request log on stderr.
    """

    daemon_threads = True

    def __init__(self, field: FeatureField, address: Tuple[str, int] = ("127.0.0.1", 8000), *, quiet: bool = False):
        super().__init__(address, _Handler)
        self.field = field
        self.lock = threading.Lock()
        self.quiet = quiet
        self.document = openapi("featgs feature field", __version__)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: FieldServer
    timeout = 60  # seconds a client may take to send its request
    server_version = f"featgs/{__version__}"

    def _handle(self) -> None:
        self._answer(self._dispatch)

    # every method goes through the routes, so that a wrong one gets a 405 naming the right one
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The standard library's own errors (malformed request line, unknown method) as JSON."""
        code = 405 if code == 501 else code  # an unknown method is the client's mistake
        self.close_connection = True
        self._send(*_error(code, message or explain or HTTPStatus(code).phrase))

    def _dispatch(self) -> Response:
        path = self.path.split("?", 1)[0]
        endpoint = _ROUTES.get((self.command, path))
        if endpoint is not None:
            return endpoint(self.server, self._body()) if self.command == "POST" else endpoint(self.server)
        allowed = [method for method, p in _ROUTES if p == path]
        if allowed:
            raise HTTPError(405, f"{path} takes {allowed[0]}, not {self.command}")
        raise HTTPError(404, f"no endpoint {path[:100]!r}; see GET /openapi.json")

    def _body(self) -> Dict[str, Any]:
        """The request's JSON body, validated against the schema of its path."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "a JSON body with a Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise HTTPError(400, f"Content-Length must be an integer, got {length[:40]!r}") from None
        if n < 0:
            raise HTTPError(400, "Content-Length must not be negative")
        if n > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise HTTPError(413, f"request body of {n} bytes exceeds the limit of {MAX_BODY}")
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            self.close_connection = True
            raise HTTPError(408, f"the request body did not arrive within {self.timeout} s") from None
        if len(raw) < n:
            raise HTTPError(400, f"request body ended after {len(raw)} of {n} bytes")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HTTPError(400, f"request body is not valid JSON ({str(e)[:120] or 'nested too deeply'})") from None
        try:
            validate(body, REQUESTS[self.path.split("?", 1)[0]])
        except SchemaError as e:
            raise HTTPError(400, str(e)) from None
        return body

    def _answer(self, make: Callable[[], Response]) -> None:
        try:
            status, kind, payload = make()
        except HTTPError as e:
            status, kind, payload = _error(e.status, str(e))
        except FeatgsError as e:
            status, kind, payload = _error(400, str(e))
        except Exception as e:  # a bug: answer, log, keep serving
            traceback.print_exc(file=sys.stderr)
            status, kind, payload = _error(500, f"internal error ({e.__class__.__name__}); the server is still running")
        self._send(status, kind, payload)

    def _send(self, status: int, kind: str, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client left; nothing to tell it
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _json(obj: Any, status: int = 200) -> Response:
    return status, "application/json", json.dumps(obj).encode()


def _error(status: int, message: str) -> Response:
    return _json({"error": message, "status": status}, status)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# -- GET ---------------------------------------------------------------------------------------

def _health(server: FieldServer) -> Response:
    f = server.field
    return _json({"status": "ok", "version": __version__, "num_gaussians": f.num_gaussians,
                  "text_queries": f.encoder is not None, "label_names": list(f.label_names),
                  "views": {"test": len(f.test_cameras), "train": len(f.train_cameras)},
                  "mask_decoder": f.mask_decoder is not None})


def _views(server: FieldServer) -> Response:
    f = server.field
    return _json({split: [{"view": i, "name": c.name, "width": c.width, "height": c.height} for i, c in enumerate(cams)]
                  for split, cams in (("test", f.test_cameras), ("train", f.train_cameras))})


# -- POST --------------------------------------------------------------------------------------

def _camera(field: FeatureField, spec: Dict[str, Any]) -> Camera:
    """The camera a (validated) request names: a view of the run or explicit intrinsics and pose."""
    if "view" in spec:
        return field.camera(spec["view"], spec.get("split", "test"))
    cam = Camera.from_dict({k: v for k, v in spec.items() if k != "frame"}, source="camera")
    cam.check_plausible(max_focal=100 * MAX_SIDE, source="camera")
    return field.from_dataset_frame(cam) if spec.get("frame") == "dataset" else cam


def _query_config(body: Dict[str, Any]) -> QueryConfig:
    return QueryConfig(rule=body.get("rule", "auto"), threshold=body.get("threshold"), clean=body.get("clean", True))


def _query(server: FieldServer, body: Dict[str, Any]) -> Response:
    config = _query_config(body)
    sel = server.field.query(body["text"], body.get("negatives"), config=config)
    return _json(server.field.describe(sel, with_ids=body.get("with_ids", False)))


def _segment(server: FieldServer, body: Dict[str, Any]) -> Response:
    f = server.field
    cam = _camera(f, body["camera"])
    labels = list(body.get("labels") or f.label_names)
    seg = f.segment(cam, labels)
    counts = torch.bincount(seg.reshape(-1), minlength=len(labels)).tolist()
    return _json({"labels": labels, "width": cam.width, "height": cam.height, "counts": counts,
                  "label_map_png": base64.b64encode(_png(seg.to(torch.uint8).numpy())).decode()})


def _prompt_args(body: Dict[str, Any]) -> Dict[str, Any]:
    config = PromptConfig()
    if "affinity" in body:
        config = config.with_affinity(body["affinity"])
    return dict(points=body.get("points"), point_labels=body.get("point_labels"), box=body.get("box"), config=config)


def _prompt(server: FieldServer, body: Dict[str, Any]) -> Response:
    f = server.field
    mask, sel = f.prompt(_camera(f, body["camera"]), **_prompt_args(body))
    png = _png(mask.numpy().astype(np.uint8) * 255)
    return _json({"mask_png": base64.b64encode(png).decode(), "mask_area": int(mask.sum()),
                  "selection": server.field.describe(sel, with_ids=body.get("with_ids", False))})


def _selection(field: FeatureField, spec: Dict[str, Any]) -> Selection:
    if "ids" in spec:
        return Selection.from_ids(field.gaussians.means, torch.tensor(spec["ids"], dtype=torch.int64))
    if "prompt" in spec:
        p = spec["prompt"]
        return field.prompt(_camera(field, p["camera"]), **_prompt_args(p))[1]
    return field.query(spec["text"], spec.get("negatives"), config=_query_config(spec))


def _edit(server: FieldServer, body: Dict[str, Any]) -> Response:
    try:
        op = make_edit(body["op"], rgb=body.get("rgb"), offset=body.get("offset"))
    except FeatgsError as e:
        raise HTTPError(400, f"body: {e}") from None
    target = _edit_path(server.field, body.get("name"), body.get("overwrite", False))
    f = server.field
    sel = _selection(f, body["selection"])
    edited = f.edit(sel, op)
    if target is not None:
        with server.lock:  # check and save as one step: two requests for one name cannot both write
            if target.exists() and not body.get("overwrite", False):
                raise HTTPError(409, f"body.name: {EDITS_FOLDER}/{target.stem}.ply exists; pass overwrite: true to replace it")
            edited.save(target)
    if target is not None:
        return _json({"saved": f"{EDITS_FOLDER}/{target.name}", "num_gaussians": edited.num_gaussians,
                      "selection": server.field.describe(sel)})
    with tempfile.TemporaryDirectory() as tmp:
        path = edited.save(Path(tmp) / "edit.ply")
        return 200, "application/octet-stream", path.read_bytes()


def _edit_path(field: FeatureField, name: Optional[str], overwrite: bool) -> Optional[Path]:
    """RUN/edits/NAME.ply for a safe NAME (no separators, dots or traversal), or None for no name."""
    if name is None:
        return None
    if not _NAME.fullmatch(name):
        raise HTTPError(400, "body.name: use 1-64 letters, digits, '_' or '-', starting with a letter or digit "
                             "(it becomes RUN/edits/NAME.ply; paths are not accepted)")
    if field.root is None:
        raise HTTPError(400, "body.name: this server has no run folder to save edits in; leave out name to get the PLY back")
    folder = (field.root / EDITS_FOLDER).resolve()
    target = folder / f"{name}.ply"
    if target.parent != folder:  # cannot happen with the pattern above; kept as the invariant
        raise HTTPError(400, "body.name: not a plain file name")
    if target.exists() and not overwrite:
        raise HTTPError(409, f"body.name: {EDITS_FOLDER}/{name}.ply exists; pass overwrite: true to replace it")
    return target


def _render(server: FieldServer, body: Dict[str, Any]) -> Response:
    mode = body.get("mode", "rgb")
    if mode in ("relevancy", "selection") and "text" not in body:
        raise HTTPError(400, f"body: mode {mode!r} needs 'text'")
    f = server.field
    cam = _camera(f, body["camera"])
    sel = f.query(body["text"], body.get("negatives")) if mode == "selection" else None
    image = f.render(cam, mode, text=body.get("text"), labels=body.get("labels"), selection=sel,
                     negatives=body.get("negatives"))
    return 200, "image/png", _png(to_uint8(image))


_ROUTES: Dict[Tuple[str, str], Callable[..., Response]] = {
    ("GET", "/health"): _health, ("GET", "/views"): _views, ("GET", "/openapi.json"): lambda s: _json(s.document),
    ("POST", "/query"): _query, ("POST", "/segment"): _segment, ("POST", "/prompt"): _prompt,
    ("POST", "/edit"): _edit, ("POST", "/render"): _render,
}
