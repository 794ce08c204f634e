"""The HTTP routes, one module per area.

Starlette's `path` convertor (`.*`, compiled without DOTALL) does not match a
newline, so a product id holding one (sent as %0A) matched no route and every
product route answered 404 (Starlette issue #1058, still so in 1.10). The same
convertor, matching any character, is registered here, before any route of ours
is compiled: the route templates, and so the metric's route labels, stay
`/products/{product_id:path}/…`.
"""

from __future__ import annotations

from starlette.convertors import PathConvertor, register_url_convertor


class AnyCharacterPathConvertor(PathConvertor):
    """The rest of the path, newlines included."""

    regex = "(?s:.*)"


register_url_convertor("path", AnyCharacterPathConvertor())
