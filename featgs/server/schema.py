"""Request schemas of the HTTP API: one definition validates requests and documents them.

The schemas are plain JSON Schema (the subset :func:`validate` understands: type, properties,
required, additionalProperties, items, min/maxItems, min/maxLength, minimum, maximum, enum,
oneOf), so the OpenAPI document serves them as they are.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

from featgs.query.modes import RENDER_MODES
from featgs.query.relevancy import RULES

MAX_SIDE = 2048  # pixels, either side of a requested camera
MAX_TEXT = 200  # characters of one text
MAX_LABELS = 64
MAX_POINTS = 32
MAX_NEGATIVES = 16
MAX_IDS = 1_000_000


class SchemaError(ValueError):
    """A request that does not match its schema; the message names the field."""


def validate(value: Any, schema: Dict[str, Any], where: str = "body") -> None:
    """Raise :class:`SchemaError` naming the first place where ``value`` breaks ``schema``."""
    if "oneOf" in schema:
        matches = []
        errors: List[str] = []
        for option in schema["oneOf"]:
            try:
                validate(value, option, where)
                matches.append(option)
            except SchemaError as e:
                errors.append(str(e))
        if len(matches) != 1:
            raise SchemaError(f"{where}: {schema.get('description', 'does not match exactly one allowed form')}"
                              + (f" ({'; '.join(errors[:2])})" if not matches else ""))
        return
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        raise SchemaError(f"{where}: expected {kind}, got {_name(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: expected one of {', '.join(map(str, schema['enum']))}, got {value!r:.60}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(f"{where}: must not be empty" if schema.get("minLength") == 1 else f"{where}: too short")
        if len(value) > schema.get("maxLength", math.inf):
            raise SchemaError(f"{where}: at most {schema['maxLength']} characters, got {len(value)}")
        if "minLength" in schema and not value.strip():
            raise SchemaError(f"{where}: must not be blank")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            lo, hi = schema.get("minimum", "-inf"), schema.get("maximum", "inf")
            raise SchemaError(f"{where}: must lie in {lo}..{hi}, got {value}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
            lo, hi = schema.get("minItems", 0), schema.get("maxItems", "any")
            raise SchemaError(f"{where}: expected {lo}..{hi} items, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{where}: missing {key!r}")
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                raise SchemaError(f"{where}: unknown field(s) {', '.join(map(repr, extra[:5]))}; "
                                  f"expected {', '.join(props)}")
        for key, sub in props.items():
            if key in value:
                validate(value[key], sub, f"{where}.{key}")


def _is_type(value: Any, kind) -> bool:
    if isinstance(kind, list):
        return any(_is_type(value, k) for k in kind)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"string": str, "boolean": bool, "array": list, "object": dict, "null": type(None)}[kind])


def _name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


# -- building blocks --------------------------------------------------------------------------

def _vec(n: int, lo: float = -math.inf, hi: float = math.inf, description: str = "") -> dict:
    item: Dict[str, Any] = {"type": "number"}
    if math.isfinite(lo):
        item["minimum"] = lo
    if math.isfinite(hi):
        item["maximum"] = hi
    out = {"type": "array", "items": item, "minItems": n, "maxItems": n}
    if description:
        out["description"] = description
    return out


def _matrix(rows: int, cols: int, bound: float) -> dict:
    return {"type": "array", "items": _vec(cols, -bound, bound), "minItems": rows, "maxItems": rows}


TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}

CAMERA = {
    "description": "a camera: either {view, split} (one of the run's views) or {width, height, K, camtoworld, "
                   "frame} (OpenCV: x right, y down, z forward; K in pixels; the pose in the run's frame, or with "
                   "frame 'dataset' in the frame of the dataset's own camera poses)",
    "oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["view"],
         "properties": {"view": {"type": "integer", "minimum": 0, "maximum": 1_000_000, "description": "view index"},
                        "split": {"type": "string", "enum": ["test", "train"], "description": "default test"}}},
        {"type": "object", "additionalProperties": False, "required": ["width", "height", "K", "camtoworld"],
         "properties": {"width": {"type": "integer", "minimum": 1, "maximum": MAX_SIDE},
                        "height": {"type": "integer", "minimum": 1, "maximum": MAX_SIDE},
                        "K": _matrix(3, 3, 1e6), "camtoworld": _matrix(4, 4, 1e6),
                        "frame": {"type": "string", "enum": ["run", "dataset"], "description": "default run"}}},
    ],
}

QUERY_OPTIONS = {
    "text": TEXT,
    "negatives": {"type": "array", "items": TEXT, "maxItems": MAX_NEGATIVES,
                  "description": "phrases the text competes against (default: object, things, stuff, texture; [] = cosine)"},
    "rule": {"type": "string", "enum": list(RULES), "description": "threshold rule (default auto)"},
    "threshold": {"type": "number", "description": "the rule's parameter (see featgs query --help)"},
    "clean": {"type": "boolean", "description": "drop floaters and add the Gaussians the selection hides (default true)"},
}

QUERY = {"type": "object", "additionalProperties": False, "required": ["text"],
         "properties": {**QUERY_OPTIONS, "with_ids": {"type": "boolean", "description": "include the selected ids"}}}

PROMPT_FIELDS = {
    "camera": CAMERA,
    "points": {"type": "array", "items": _vec(2, 0, MAX_SIDE), "maxItems": MAX_POINTS,
               "description": "clicked pixels [[x, y], ...] (x right, y down)"},
    "point_labels": {"type": "array", "items": {"type": "integer", "enum": [0, 1]}, "maxItems": MAX_POINTS,
                     "description": "1 = on the object, 0 = not on it (default all 1)"},
    "box": _vec(4, -MAX_SIDE, 2 * MAX_SIDE, "[x0, y0, x1, y1] pixels"),
    "affinity": {"type": "number", "minimum": -0.99, "maximum": 0.99,
                 "description": "feature cosine to the clicked feature a Gaussian needs (default 0.8)"},
}

PROMPT = {"type": "object", "additionalProperties": False, "required": ["camera"],
          "properties": {**PROMPT_FIELDS, "with_ids": {"type": "boolean"}}}

SELECTION = {
    "description": "a selection: {text, ...query options}, {ids: [...]}, or {prompt: {camera, points, ...}}",
    "oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["text"], "properties": QUERY_OPTIONS},
        {"type": "object", "additionalProperties": False, "required": ["ids"],
         "properties": {"ids": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**62},
                                "maxItems": MAX_IDS}}},
        {"type": "object", "additionalProperties": False, "required": ["prompt"],
         "properties": {"prompt": {"type": "object", "additionalProperties": False, "required": ["camera"],
                                   "properties": PROMPT_FIELDS}}},
    ],
}

EDIT_NAME = {"type": "string", "minLength": 1, "maxLength": 64,
             "description": "save as RUN/edits/NAME.ply (letters, digits, '_' and '-'; starts with a letter or digit); "
                            "without a name the PLY comes back as the response body"}

EDIT = {"type": "object", "additionalProperties": False, "required": ["selection", "op"],
        "properties": {"selection": SELECTION,
                       "op": {"type": "string", "enum": ["delete", "extract", "recolor", "translate"]},
                       "rgb": _vec(3, 0, 1, "recolor: the new colour, three numbers in 0..1"),
                       "offset": _vec(3, -1e6, 1e6, "translate: x, y, z in the run's frame"),
                       "name": EDIT_NAME,
                       "overwrite": {"type": "boolean", "description": "replace an edit of the same name"}}}

SEGMENT = {"type": "object", "additionalProperties": False, "required": ["camera"],
           "properties": {"camera": CAMERA,
                          "labels": {"type": "array", "items": TEXT, "minItems": 1, "maxItems": MAX_LABELS,
                                     "description": "label texts (default: the run's label names)"}}}

RENDER = {"type": "object", "additionalProperties": False, "required": ["camera"],
          "properties": {"camera": CAMERA,
                         "mode": {"type": "string", "enum": list(RENDER_MODES), "description": "default rgb"},
                         "text": {**TEXT, "description": "relevancy and selection modes: the query"},
                         "negatives": QUERY_OPTIONS["negatives"],
                         "labels": SEGMENT["properties"]["labels"]}}

REQUESTS = {"/query": QUERY, "/segment": SEGMENT, "/prompt": PROMPT, "/edit": EDIT, "/render": RENDER}


def _json_response(description: str, example: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}, "example": example}}}


BINARY = {"type": "string", "format": "binary"}

ERROR = _json_response("bad request: the message names the field", {"error": "body.text: must not be empty"})

SELECTION_EXAMPLE = {"num_selected": 253, "num_gaussians": 52523, "bbox": [[-0.15, -0.17, -0.47], [-0.07, -0.12, -0.39]],
                     "centroid": [-0.11, -0.15, -0.43], "threshold": 0.5, "rule": "labels", "text": "red mug",
                     "dataset_frame": {"bbox": [[-0.23, -0.26, 0.72], [-0.11, -0.19, 0.84]],
                                       "centroid": [-0.18, -0.22, 0.79]}}


def openapi(title: str, version: str) -> dict:
    """The OpenAPI 3.1 document of the server."""
    post = {
        "/query": ("Select the Gaussians a text names", _json_response("the selection", SELECTION_EXAMPLE)),
        "/segment": ("Label every pixel of a view with the most similar label text",
                     _json_response("labels, per-label pixel counts, and the label map as a base64 8-bit PNG of indices",
                                    {"labels": ["table", "red mug"], "width": 128, "height": 128, "counts": [9000, 384],
                                     "label_map_png": "iVBORw0..."})),
        "/prompt": ("Segment the object at clicked points or in a box",
                    _json_response("the mask (base64 PNG, 255 = inside) and the 3D selection",
                                   {"mask_png": "iVBORw0...", "mask_area": 384, "selection": SELECTION_EXAMPLE})),
        "/edit": ("Delete, extract, recolour or move a selection",
                  {"description": "with a name: where it was saved; without: the PLY itself",
                   "content": {"application/json": {"example": {"saved": "edits/no_mug.ply", "num_gaussians": 52270,
                                                                "selection": SELECTION_EXAMPLE}},
                               "application/octet-stream": {"schema": BINARY}}}),
        "/render": ("Render a view as a PNG",
                    {"description": "the picture", "content": {"image/png": {"schema": BINARY}}}),
    }
    paths: Dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness and what the run holds",
                            "responses": {"200": _json_response("ok", {"status": "ok", "num_gaussians": 52523})}}},
        "/views": {"get": {"summary": "The run's views (for {view, split} cameras)",
                           "responses": {"200": _json_response("views", {"test": [{"view": 0, "name": "test_0000",
                                                                                    "width": 128, "height": 128}]})}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    }
    for path, (summary, ok) in post.items():
        paths[path] = {"post": {"summary": summary,
                                "requestBody": {"required": True,
                                                "content": {"application/json": {"schema": REQUESTS[path]}}},
                                "responses": {"200": ok, "400": ERROR, "404": ERROR, "413": ERROR}}}
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths}
