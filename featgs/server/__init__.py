"""The HTTP JSON API: query, segment, prompt, edit and render one run (standard library only).

- :class:`FieldServer` a ``ThreadingHTTPServer`` over a :class:`~featgs.query.FeatureField`
- :mod:`featgs.server.schema` the request schemas, their validator and the OpenAPI document
"""

from featgs.server.app import FieldServer
from featgs.server.schema import openapi

__all__ = ["FieldServer", "openapi"]
