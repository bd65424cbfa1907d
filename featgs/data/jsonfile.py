"""Reading JSON from a dataset's files, with one-line errors.

A dataset's JSON comes from anywhere (a converter, a hand edit, a hostile download), so the
parser is strict where Python's is lenient: ``NaN``, ``Infinity`` and numbers beyond the
range of a 64-bit float are refused while parsing (``json`` would give ``nan``/``inf``, or an
``int`` that overflows later in ``float()`` or ``torch.tensor``), and nesting too deep for
the parser is an error, not a ``RecursionError``. :func:`number` and :func:`integer` then
check the type and range of each value a loader uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from featgs.errors import FeatgsError

# Integers of more digits than this are out of float range anyway; refusing them by length
# spares converting them (Python refuses int() of over 4300 digits with a ValueError).
_MAX_INT_DIGITS = 309


class _Refused(ValueError):
    """A number the strict parser refuses; the message says which and why."""


def _constant(name: str) -> float:
    raise _Refused(f"{name} is not a finite number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{text} is out of the range of a 64-bit float")
    return value


def _int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits)} digits is out of the range of a 64-bit float")
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise _Refused(f"{text} is out of the range of a 64-bit float") from None
    return value


def loads_strict(text: str) -> object:
    """``json.loads`` refusing NaN, Infinity and out-of-range numbers (raises ValueError,
    RecursionError for nesting too deep, as ``json.loads`` does)."""
    return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)


def read_json(path: Path, expected: str) -> object:
    """The JSON value in ``path``; ``expected`` describes the file for error messages."""
    try:
        return loads_strict(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatgsError(f"{path}: file not found; expected {expected}") from None
    except json.JSONDecodeError as e:
        raise FeatgsError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg}); expected {expected}") from None
    except _Refused as e:
        raise FeatgsError(f"{path}: {e}; expected {expected} with finite numbers") from None
    except RecursionError:
        raise FeatgsError(f"{path}: JSON nested too deeply to read; expected {expected}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FeatgsError(f"{path}: cannot read file ({e.__class__.__name__}); expected {expected}") from None
    except ValueError as e:  # whatever else the decoder refuses
        raise FeatgsError(f"{path}: malformed JSON ({e.__class__.__name__}); expected {expected}") from None


def read_json_object(path: Path, expected: str) -> dict:
    """The JSON object in ``path``; ``expected`` describes the file for error messages."""
    data = read_json(path, expected)
    if not isinstance(data, dict):
        raise FeatgsError(f"{path}: top level is {_json_kind(data)}; expected {expected} (a JSON object)")
    return data


def number(value: object, where: str, key: str) -> float:
    """``value`` as a finite float, or an error naming ``where`` and ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FeatgsError(f"{where}: {key} is {shorten(value)}; expected a finite number")
    try:
        out = float(value)
    except OverflowError:  # an int beyond float range (from a caller that parsed leniently)
        out = math.inf
    if not math.isfinite(out):
        raise FeatgsError(f"{where}: {key} is {shorten(value)}; expected a finite number")
    return out


def integer(value: object, where: str, key: str) -> int:
    """``value`` as an int (a whole number, e.g. 640 or 640.0), or an error naming ``where`` and ``key``."""
    out = number(value, where, key)
    if out != int(out):
        raise FeatgsError(f"{where}: {key} is {shorten(value)}; expected a whole number")
    return int(out)


def shorten(value: object) -> str:
    """``repr(value)``, cut to fit in a one-line message (a value may be a huge list)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's words ("null", "an array", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)
