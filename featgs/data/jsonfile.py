"""Reading a JSON object from a dataset file, with one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

from featgs.errors import FeatgsError


def read_json_object(path: Path, expected: str) -> dict:
    """The JSON object in ``path``; ``expected`` describes the file for error messages."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeatgsError(f"{path}: file not found; expected {expected}") from None
    except json.JSONDecodeError as e:
        raise FeatgsError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg}); expected {expected}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FeatgsError(f"{path}: cannot read file ({e.__class__.__name__}); expected {expected}") from None
    if not isinstance(data, dict):
        raise FeatgsError(f"{path}: top level is a JSON {type(data).__name__}; expected {expected} (a JSON object)")
    return data


def number(value: object, where: str, key: str) -> float:
    """``value`` as a finite float, or an error naming ``where`` and ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FeatgsError(f"{where}: {key} is {value!r}; expected a finite number")
    return float(value)
