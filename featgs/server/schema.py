"""Request bodies of the HTTP API as pydantic models, and one-line messages for their errors.

FastAPI validates each body against its model before an endpoint runs, and documents the models
in ``/openapi.json``. The models are strict (``"5"`` is not 5, ``true`` is not a number) and
closed (an unknown field is an error, not ignored), and :func:`error_message` turns pydantic's
first complaint into featgs's one line naming the field, e.g.
``body.camera.width: must lie in 1..2048, got 4096``.

Units: pixels for image sizes, points and boxes (x right, y down); the run's frame (or, for a
camera with ``frame: "dataset"``, the dataset's) for poses and offsets; colours in 0..1.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, List, Literal, Mapping, Optional, Sequence, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from featgs.query.modes import RENDER_MODES
from featgs.query.relevancy import RULES

MAX_SIDE = 2048  # pixels, either side of a requested camera
MAX_TEXT = 200  # characters of one text
MAX_LABELS = 64
MAX_POINTS = 32
MAX_NEGATIVES = 16
MAX_IDS = 1_000_000
MAX_COORD = 1e6  # bound of every entry of K, camtoworld and offset: keeps the maths finite
EDIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# Tags of the union members below. They show up in pydantic's error locations; the colon (which
# no field name has) lets error_message drop them, so that a location reads body.camera.width.
_TAG = ":"


def _in_range(kind: type, lo: float, hi: float, description: str = "") -> Any:
    """``kind`` (int or float) in ``lo..hi`` inclusive: one message naming both bounds, and both
    bounds in the JSON schema (pydantic's own ge/le would report one bound per error)."""

    def check(value: Any) -> Any:
        if not lo <= value <= hi:
            raise PydanticCustomError("range", "must lie in {lo}..{hi}, got {value}", {"lo": lo, "hi": hi, "value": value})
        return value

    schema = {"type": "integer" if kind is int else "number", "minimum": lo, "maximum": hi}
    if description:
        schema["description"] = description
    return Annotated[kind, AfterValidator(check), WithJsonSchema(schema)]


def _vec(n: int, lo: float, hi: float) -> Any:
    """``n`` numbers, each in ``lo..hi``."""
    return Annotated[List[_in_range(float, lo, hi)], Field(min_length=n, max_length=n)]


def _matrix(rows: int, cols: int) -> Any:
    return Annotated[List[_vec(cols, -MAX_COORD, MAX_COORD)], Field(min_length=rows, max_length=rows)]


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return text


def _plain_name(name: str) -> str:
    if not EDIT_NAME.fullmatch(name):
        raise PydanticCustomError("edit_name", "use 1-64 letters, digits, '_' or '-', starting with a letter or digit "
                                               "(it becomes RUN/edits/NAME.ply; paths are not accepted)")
    return name


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_not_blank)]
Texts = Annotated[List[Text], Field(max_length=MAX_NEGATIVES)]
Labels = Annotated[List[Text], Field(min_length=1, max_length=MAX_LABELS,
                                     description="label texts (default: the run's label names)")]
EditName = Annotated[str, AfterValidator(_plain_name), WithJsonSchema(
    {"type": "string", "pattern": f"^{EDIT_NAME.pattern}$",
     "description": "save as RUN/edits/NAME.ply (with its decoder beside it); without a name the PLY comes back "
                    "as the response body, its features decoded to D dimensions (self-contained)"})]


class _Closed(BaseModel):
    """No unknown fields, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ViewCamera(_Closed):
    """One of the run's views (GET /views lists them)."""

    view: _in_range(int, 0, 1_000_000, "view index")
    split: Literal["test", "train"] = "test"


class PinholeCamera(_Closed):
    """A camera in full, OpenCV convention (x right, y down, z forward)."""

    width: _in_range(int, 1, MAX_SIDE, "pixels")
    height: _in_range(int, 1, MAX_SIDE, "pixels")
    K: _matrix(3, 3) = Field(description="3x3 intrinsics in pixels")
    camtoworld: _matrix(4, 4) = Field(description="4x4 camera-to-world pose")
    frame: Literal["run", "dataset"] = Field(
        "run", description="the pose's frame: the run's (its PLY's) or that of the dataset's own camera poses")


def _camera_form(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        return f"camera{_TAG}view" if "view" in value else f"camera{_TAG}pinhole"
    return None  # pydantic reports the custom error below


CAMERA_HELP = ("a camera: either {view, split} (one of the run's views) or {width, height, K, camtoworld, frame} "
               "(OpenCV: x right, y down, z forward; K in pixels; at most 2048x2048)")
Camera = Annotated[Union[Annotated[ViewCamera, Tag(f"camera{_TAG}view")],
                         Annotated[PinholeCamera, Tag(f"camera{_TAG}pinhole")]],
                   Discriminator(_camera_form, custom_error_type="camera", custom_error_message=CAMERA_HELP),
                   Field(description=CAMERA_HELP)]


class TextSelection(_Closed):
    """The Gaussians a text names."""

    text: Text
    negatives: Optional[Texts] = Field(
        None, description="phrases the text competes against (default: object, things, stuff, texture; [] = cosine)")
    rule: Literal[RULES] = Field("auto", description="threshold rule")  # type: ignore[valid-type]
    threshold: Optional[float] = Field(None, description="the rule's parameter (see featgs query --help)")
    clean: bool = Field(True, description="drop floaters and add the Gaussians the selection hides")


class QueryRequest(TextSelection):
    with_ids: bool = Field(False, description="include the selected ids")


class PromptSpec(_Closed):
    """Clicked points and/or a box on a camera's image."""

    camera: Camera
    points: Optional[Annotated[List[_vec(2, 0, MAX_SIDE)], Field(max_length=MAX_POINTS)]] = Field(
        None, description="clicked pixels [[x, y], ...]")
    point_labels: Optional[Annotated[List[Literal[0, 1]], Field(max_length=MAX_POINTS)]] = Field(
        None, description="1 = on the object, 0 = not on it (default all 1)")
    box: Optional[_vec(4, -MAX_SIDE, 2 * MAX_SIDE)] = Field(None, description="[x0, y0, x1, y1] pixels")
    affinity: Optional[_in_range(float, -0.99, 0.99)] = Field(
        None, description="feature cosine to the clicked feature a Gaussian needs (default 0.8)")


class PromptRequest(PromptSpec):
    with_ids: bool = Field(False, description="include the selected ids")


class IdSelection(_Closed):
    """Gaussians by index into the run's PLY."""

    ids: Annotated[List[_in_range(int, 0, 2**62)], Field(max_length=MAX_IDS)]


class PromptSelection(_Closed):
    """The Gaussians a prompt picks."""

    prompt: PromptSpec


def _selection_form(value: Any) -> Optional[str]:
    forms = [key for key in ("text", "ids", "prompt") if key in value] if isinstance(value, dict) else []
    return f"selection{_TAG}{forms[0]}" if len(forms) == 1 else None


SELECTION_HELP = "a selection: exactly one of {text, ...query options}, {ids: [...]} or {prompt: {camera, points, ...}}"
Selection = Annotated[Union[Annotated[TextSelection, Tag(f"selection{_TAG}text")],
                            Annotated[IdSelection, Tag(f"selection{_TAG}ids")],
                            Annotated[PromptSelection, Tag(f"selection{_TAG}prompt")]],
                      Discriminator(_selection_form, custom_error_type="selection", custom_error_message=SELECTION_HELP)]


class SegmentRequest(_Closed):
    camera: Camera
    labels: Optional[Labels] = None


class EditRequest(_Closed):
    selection: Selection
    op: Literal["delete", "extract", "recolor", "translate"]
    rgb: Optional[_vec(3, 0, 1)] = Field(None, description="recolor: the new colour, three numbers in 0..1")
    offset: Optional[_vec(3, -MAX_COORD, MAX_COORD)] = Field(None, description="translate: x, y, z in the run's frame")
    name: Optional[EditName] = None
    overwrite: bool = Field(False, description="replace an edit of the same name")


class RenderRequest(_Closed):
    camera: Camera
    mode: Literal[RENDER_MODES] = "rgb"  # type: ignore[valid-type]
    text: Optional[Text] = Field(None, description="relevancy and selection modes: the query")
    negatives: Optional[Texts] = None
    labels: Optional[Labels] = None


class ErrorBody(BaseModel):
    """What every answer other than 200 carries."""

    error: str = Field(description="one line; for a bad request it starts with the field, e.g. body.text")
    status: int = Field(description="the HTTP status again")


# -- error messages ---------------------------------------------------------------------------

_TYPES = {"string_type": "string", "int_type": "integer", "float_type": "number", "bool_type": "boolean",
          "list_type": "array", "dict_type": "object", "model_type": "object", "model_attributes_type": "object"}


def error_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line for the first of pydantic's ``errors`` (``ValidationError.errors()``): the
    place, as ``body.camera.K[0][1]``, then what is wrong with it."""
    error = errors[0]
    loc = [part for part in error["loc"] if not (isinstance(part, str) and _TAG in part)]
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        if len(loc) <= 1:
            return "body: a JSON object is required"
        return f"{_where(loc[:-1])}: missing {loc[-1]!r}"
    if kind == "extra_forbidden":
        return f"{_where(loc[:-1])}: unknown field {loc[-1]!r} (GET /openapi.json lists the fields)"
    if kind in _TYPES:
        what = f"expected {_TYPES[kind]}, got {_json_type(value)}"
    elif kind == "string_too_short":
        what = "must not be empty"
    elif kind == "string_too_long":
        what = f"at most {ctx['max_length']} characters, got {len(value)}"
    elif kind == "too_short":
        what = f"expected at least {ctx['min_length']} items, got {ctx['actual_length']}"
    elif kind == "too_long":
        what = f"expected at most {ctx['max_length']} items, got {ctx.get('actual_length', 'more')}"
    elif kind == "literal_error":  # pydantic writes "'a', 'b' or 'c'"
        what = f"expected one of {', '.join(str(ctx['expected']).rsplit(' or ', 1))}, got {value!r:.60}"
    else:  # featgs's own (range, blank, camera, selection, edit_name) and anything else pydantic says
        what = str(error["msg"])
    return f"{_where(loc)}: {what}"


def _where(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
