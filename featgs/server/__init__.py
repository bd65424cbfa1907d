"""The HTTP JSON API: query, segment, prompt, edit and render one run (FastAPI on uvicorn).

- :func:`create_app` the ASGI app over a :class:`~featgs.query.FeatureField`
- :class:`FieldServer` that app on a socket: in a thread, or in the foreground for ``featgs serve``
- :mod:`featgs.server.schema` the request bodies (pydantic models) and their error messages
- :mod:`featgs.server.guard` the checks every request passes first (Host, Origin, body)
"""

from featgs.server.app import MAX_BODY, create_app
from featgs.server.serving import FieldServer

__all__ = ["FieldServer", "MAX_BODY", "create_app"]
