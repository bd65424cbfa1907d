"""The HTTP JSON API over one :class:`~featgs.query.FeatureField`, as a FastAPI app.

Every request passes :class:`~featgs.server.guard.Guard` (Host, Origin, JSON body of bounded
size and time), then its body is parsed strictly (no NaN or Infinity) and validated against its
pydantic model (:mod:`featgs.server.schema`) before the field is touched. Bad input gets a 4xx
answer ``{"error": message, "status": status}``, with 400 (not FastAPI's 422) for a body that
does not match its model, and 422 for a valid request the server will not carry out (a render
larger than the field's ``max_render_pairs``, an answer JSON cannot carry); an unexpected
failure gets a 500 of the same shape, and the server keeps serving. The field (and the
renderer under it) runs one operation at a time under its own lock; endpoints that compute are
plain ``def``, so FastAPI runs them in its thread pool and the event loop stays free for other
connections. No request names a path: edits are saved as
``RUN/edits/NAME.ply`` with a validated NAME, or returned.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, Optional, Union

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from featgs import __version__
from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.pictures import to_uint8
from featgs.query import FeatureField, PromptConfig, QueryConfig, RenderTooLarge, Selection
from featgs.query.edit import make_edit
from featgs.run import EDITS_FOLDER
from featgs.server.guard import Guard
from featgs.server.responses import error_response
from featgs.server.schema import (MAX_SIDE, EditRequest, ErrorBody, IdSelection, PinholeCamera, PromptRequest,
                                  PromptSelection, PromptSpec, QueryRequest, RenderRequest, SegmentRequest,
                                  TextSelection, ViewCamera, error_message)

MAX_BODY = 8 << 20  # bytes of one request body (a million ids fit)
# bytes of an edited PLY sent back as the answer: it is built in memory (twice: the file and the
# answer), and a larger scene is better saved under RUN/edits with its small d-dim features
MAX_PLY_ANSWER = 1 << 30
BODY_TIMEOUT = 30.0  # seconds a client may take to send a request body

# HTTP's own methods: any other gets "unsupported method" rather than "takes POST, not BREW"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def create_app(field: FeatureField, *, hosts: Optional[Iterable[str]] = None, origins: Iterable[str] = (),
               max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The API over ``field`` (never modified: edits make new fields).

    Args:
        hosts: Host header names accepted (without port); None accepts any. :class:`FieldServer`
            passes the names of the address it is bound to.
        origins: browser origins (``http://host:port``) allowed besides the server's own; they
            also get CORS headers, so that a page there can read the answers.
        max_body: bytes of a request body.
        body_timeout: seconds from a request's head to its body's last byte.
    """
    origins = sorted({o.lower() for o in origins})  # as browsers send them
    middleware = [Middleware(Guard, hosts=hosts, origins=origins, max_body=max_body, body_timeout=body_timeout)]
    if origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                                     allow_headers=["Content-Type"]))
    app = FastAPI(title="featgs feature field", version=__version__, redoc_url=None, middleware=middleware,
                  description="Query, segment, prompt, edit and render one trained run. Cameras are "
                              "{view, split} or {width, height, K, camtoworld} (OpenCV, at most 2048x2048).",
                  exception_handlers={HTTPException: _http_error, RequestValidationError: _invalid_body,
                                      RenderTooLarge: _too_large, FeatgsError: _featgs_error,
                                      Exception: _internal_error})
    app.state.field = field
    app.state.edit_lock = threading.Lock()  # held while an edit is checked and saved into RUN/edits/
    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# -- errors ------------------------------------------------------------------------------------

async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path, method = request.url.path, request.method
    message = exc.detail
    if exc.status_code == 404:
        message = f"no endpoint {path[:100]!r}; see GET /openapi.json"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = (f"{path} takes {allowed}, not {method}" if method in _METHODS
                   else f"unsupported method {method[:20]!r}; {path} takes {allowed}")
    return error_response(exc.status_code, message, headers=exc.headers)


async def _invalid_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, error_message(exc.errors()))


async def _featgs_error(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc))


async def _too_large(request: Request, exc: Exception) -> Response:
    # a well-formed request that asks for more memory than the server allows: not the body's
    # fault, so not a 400; the message says how much and what the limit is
    return error_response(422, str(exc))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette answers with this, then re-raises for uvicorn to log the traceback; the
    # server goes on serving.
    return error_response(500, f"internal error ({exc.__class__.__name__}); the server is still running")


class _StrictJSONRequest(Request):
    """A request whose JSON body may not hold NaN or Infinity (Python's json module takes them;
    JSON does not), nor be nested deeper than the parser's recursion."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            # a large body (up to a million ids) is parsed off the event loop
            self._json = await run_in_threadpool(_parse, raw) if len(raw) > 1 << 16 else _parse(raw)
        return self._json


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HTTPException(400, f"request body is not valid JSON ({str(e)[:120] or 'nested too deeply'})") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


class _Route(APIRoute):
    """A route that reads its body with :class:`_StrictJSONRequest`."""

    def get_route_handler(self):  # type: ignore[no-untyped-def]
        handle = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handle(_StrictJSONRequest(request.scope, request.receive))

        return strict


# -- answers -----------------------------------------------------------------------------------

def _json(obj: Any) -> JSONResponse:
    """``obj`` as JSON; a non-finite number in it is an error answer, never invalid JSON."""
    try:
        return JSONResponse(obj)
    except ValueError:  # starlette writes with allow_nan=False
        raise HTTPException(422, "the answer holds NaN or infinity, which JSON cannot carry; "
                                 "the request led to a degenerate result (try other parameters)") from None


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _the_field(request: Request) -> FeatureField:
    return request.app.state.field


TheField = Annotated[FeatureField, Depends(_the_field)]

_ERRORS: Dict[Union[int, str], Dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what} for status, what in (
        (400, "bad request: the message names the field, e.g. body.text: must not be empty"),
        (403, "a foreign Host or Origin"), (408, "the body took too long"), (411, "no Content-Length"),
        (413, "the body is too large"), (415, "the body is not application/json"),
        (422, "the request would need more memory than the server allows (a view too large for this "
              "run: featgs serve --max-render-pairs), or its answer holds NaN or infinity"))}


def _example(description: str, example: Any) -> Dict[Union[int, str], Dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"example": example}}}, **_ERRORS}


_SELECTION_EXAMPLE = {"num_selected": 253, "num_gaussians": 52523, "bbox": [[-0.15, -0.17, -0.47], [-0.07, -0.12, -0.39]],
                      "centroid": [-0.11, -0.15, -0.43], "threshold": 0.5, "rule": "labels", "text": "red mug",
                      "dataset_frame": {"bbox": [[-0.23, -0.26, 0.72], [-0.11, -0.19, 0.84]],
                                        "centroid": [-0.18, -0.22, 0.79]}}


def _openapi(app: FastAPI) -> Dict[str, Any]:
    """FastAPI's document, with each request body's schema in place (not only a $ref), and the
    400 this API answers for a body that fails validation instead of FastAPI's 422."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.get("components", {}).get("schemas", {})
        for operations in doc["paths"].values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "HTTPValidationError" in json.dumps(responses.get("422", {})):  # FastAPI's, not ours
                    responses.pop("422")
                content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                ref = content.get("schema", {}).get("$ref", "")
                if ref.startswith("#/components/schemas/"):
                    content["schema"] = schemas[ref.rsplit("/", 1)[1]]
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


# -- endpoints ---------------------------------------------------------------------------------

router = APIRouter(route_class=_Route)  # the route table; the field is per app, in app.state


@router.get("/health", summary="Liveness and what the run holds",
            responses=_example("ok", {"status": "ok", "num_gaussians": 52523}))
def _health(field: TheField) -> JSONResponse:
    return _json({"status": "ok", "version": __version__, "num_gaussians": field.num_gaussians,
                  "text_queries": field.encoder is not None, "label_names": list(field.label_names),
                  "views": {"test": len(field.test_cameras), "train": len(field.train_cameras)},
                  "mask_decoder": field.mask_decoder is not None})


@router.get("/views", summary="The run's views (for {view, split} cameras)",
            responses=_example("views", {"test": [{"view": 0, "name": "test_0000", "width": 128, "height": 128}]}))
def _views(field: TheField) -> JSONResponse:
    return _json({split: [{"view": i, "name": c.name, "width": c.width, "height": c.height} for i, c in enumerate(cams)]
                  for split, cams in (("test", field.test_cameras), ("train", field.train_cameras))})


def _camera(field: FeatureField, spec: Union[ViewCamera, PinholeCamera]) -> Camera:
    """The camera a request names: a view of the run, or explicit intrinsics and pose."""
    if isinstance(spec, ViewCamera):
        return field.camera(spec.view, spec.split)
    cam = Camera.from_dict(spec.model_dump(exclude={"frame"}), source="camera")
    cam.check_plausible(max_focal=100 * MAX_SIDE, source="camera")
    return field.from_dataset_frame(cam) if spec.frame == "dataset" else cam


def _query_config(spec: TextSelection) -> QueryConfig:
    return QueryConfig(rule=spec.rule, threshold=spec.threshold, clean=spec.clean)


@router.post("/query", summary="Select the Gaussians a text names",
             responses=_example("the selection", _SELECTION_EXAMPLE))
def _query(body: QueryRequest, field: TheField) -> JSONResponse:
    sel = field.query(body.text, body.negatives, config=_query_config(body))
    return _json(field.describe(sel, with_ids=body.with_ids))


@router.post("/segment", summary="Label every pixel of a view with the most similar label text",
             responses=_example("labels, per-label pixel counts, and the label map as a base64 8-bit PNG of indices",
                                {"labels": ["table", "red mug"], "width": 128, "height": 128, "counts": [9000, 384],
                                 "label_map_png": "iVBORw0..."}))
def _segment(body: SegmentRequest, field: TheField) -> JSONResponse:
    cam = _camera(field, body.camera)
    labels = list(body.labels or field.label_names)
    seg = field.segment(cam, labels)
    counts = torch.bincount(seg.reshape(-1), minlength=len(labels)).tolist()
    return _json({"labels": labels, "width": cam.width, "height": cam.height, "counts": counts,
                  "label_map_png": base64.b64encode(_png(seg.to(torch.uint8).numpy())).decode()})


def _prompt_args(spec: PromptSpec) -> Dict[str, Any]:
    config = PromptConfig()
    if spec.affinity is not None:
        config = config.with_affinity(spec.affinity)
    return dict(points=spec.points, point_labels=spec.point_labels, box=spec.box, config=config)


@router.post("/prompt", summary="Segment the object at clicked points or in a box",
             responses=_example("the mask (base64 PNG, 255 = inside) and the 3D selection",
                                {"mask_png": "iVBORw0...", "mask_area": 384, "selection": _SELECTION_EXAMPLE}))
def _prompt(body: PromptRequest, field: TheField) -> JSONResponse:
    mask, sel = field.prompt(_camera(field, body.camera), **_prompt_args(body))
    png = _png(mask.numpy().astype(np.uint8) * 255)
    return _json({"mask_png": base64.b64encode(png).decode(), "mask_area": int(mask.sum()),
                  "selection": field.describe(sel, with_ids=body.with_ids)})


def _selection(field: FeatureField, spec: Union[TextSelection, IdSelection, PromptSelection]) -> Selection:
    if isinstance(spec, IdSelection):
        return Selection.from_ids(field.gaussians.means, torch.tensor(spec.ids, dtype=torch.int64))
    if isinstance(spec, PromptSelection):
        return field.prompt(_camera(field, spec.prompt.camera), **_prompt_args(spec.prompt))[1]
    return field.query(spec.text, spec.negatives, config=_query_config(spec))


@router.post("/edit", summary="Delete, extract, recolour or move a selection",
             description="With `name`, the edited scene is saved as RUN/edits/NAME.ply (the run's d-dim "
                         "features, their decoder beside it as NAME.decoder.safetensors) and the answer says "
                         "where. Without `name`, the answer is the edited scene as one self-contained binary "
                         "PLY (standard 3DGS properties plus feat_0..feat_{D-1}): its features are decoded to "
                         "the teachers' D dimensions, the space the field renders and texts are compared in, "
                         "so no decoder file is needed to read them. Such a PLY is refused (422) above "
                         f"{MAX_PLY_ANSWER >> 20} MiB; save it by name instead.",
             responses={200: {"description": "with a name: where it was saved; without: the PLY itself, "
                                             "features decoded to D dimensions",
                              "content": {"application/json": {"example": {"saved": "edits/no_mug.ply",
                                                                           "num_gaussians": 52270,
                                                                           "selection": _SELECTION_EXAMPLE}},
                                          "application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}},
                        409: {"model": ErrorBody, "description": "an edit of that name exists"}, **_ERRORS})
def _edit(body: EditRequest, request: Request, field: TheField) -> Response:
    try:
        op = make_edit(body.op, rgb=body.rgb, offset=body.offset)
    except FeatgsError as e:
        raise HTTPException(400, f"body: {e}") from None
    target = _edit_path(field, body.name, body.overwrite)
    sel = _selection(field, body.selection)
    edited = field.edit(sel, op)
    if target is None:
        size = edited.ply_bytes(decoded=True)
        if size > MAX_PLY_ANSWER:
            raise HTTPException(422, f"the edited scene's PLY with decoded features would be {size >> 20} MiB, over "
                                     f"the {MAX_PLY_ANSWER >> 20} MiB an answer may carry; pass name to save it "
                                     f"under {EDITS_FOLDER}/ instead")
        with tempfile.TemporaryDirectory() as tmp:
            # decoded: a client gets one file it can read without the run's decoder
            path = edited.save(Path(tmp) / "edit.ply", decoded=True)
            return Response(path.read_bytes(), media_type="application/octet-stream",
                            headers={"Content-Disposition": 'attachment; filename="edit.ply"'})
    with request.app.state.edit_lock:  # check and save as one step: two requests for one name cannot both write
        if target.exists() and not body.overwrite:
            raise HTTPException(409, f"body.name: {EDITS_FOLDER}/{target.stem}.ply exists; pass overwrite: true to replace it")
        edited.save(target)
    return _json({"saved": f"{EDITS_FOLDER}/{target.name}", "num_gaussians": edited.num_gaussians,
                  "selection": field.describe(sel)})


def _edit_path(field: FeatureField, name: Optional[str], overwrite: bool) -> Optional[Path]:
    """RUN/edits/NAME.ply for a NAME the schema has checked (no separators, dots or traversal),
    or None for no name. An existing edit is refused here already, before the work."""
    if name is None:
        return None
    if field.root is None:
        raise HTTPException(400, "body.name: this server has no run folder to save edits in; "
                                 "leave out name to get the PLY back")
    folder = (field.root / EDITS_FOLDER).resolve()
    target = folder / f"{name}.ply"
    if target.parent != folder:  # cannot happen with the schema's pattern; kept as the invariant
        raise HTTPException(400, "body.name: not a plain file name")
    if target.exists() and not overwrite:
        raise HTTPException(409, f"body.name: {EDITS_FOLDER}/{name}.ply exists; pass overwrite: true to replace it")
    return target


@router.post("/render", summary="Render a view as a PNG", response_class=Response,
             responses={200: {"description": "the picture", "content": {"image/png": {}}}, **_ERRORS})
def _render(body: RenderRequest, field: TheField) -> Response:
    if body.mode in ("relevancy", "selection") and body.text is None:
        raise HTTPException(400, f"body: mode {body.mode!r} needs 'text'")
    cam = _camera(field, body.camera)
    sel = field.query(body.text, body.negatives) if body.mode == "selection" else None
    image = field.render(cam, body.mode, text=body.text, labels=body.labels, selection=sel, negatives=body.negatives)
    return Response(_png(to_uint8(image)), media_type="image/png")
