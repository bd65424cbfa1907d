"""The one shape of every answer other than 200: ``{"error": message, "status": status}``."""

from __future__ import annotations

from typing import Mapping, Optional

from starlette.responses import JSONResponse


def error_response(status: int, message: str, *, close: bool = False,
                   headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    """The JSON error answer. ``close``: end the connection after it, for a request whose body
    was not read (what is left of it cannot be taken for the next request)."""
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    # Starlette's JSONResponse writes with allow_nan=False: a NaN raises instead of becoming
    # the bare NaN token that strict JSON parsers refuse.
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)
