"""Links to products on pages that show many of them: ``url_for`` once per endpoint and
request, then the product's id put in (a page of cards asks for about ten links a card)."""

from __future__ import annotations

from flask import g, url_for

# An id no product has, marking where the id goes in a link built once.
_PLACEHOLDER = 9_007_199_254_740_991


def product_url(endpoint: str, product_id: int) -> str:
    """``url_for(endpoint, product_id=product_id)``, built from the request's pattern."""
    patterns = g.setdefault("product_url_patterns", {})
    pattern = patterns.get(endpoint)
    if pattern is None:
        pattern = patterns[endpoint] = url_for(endpoint, product_id=_PLACEHOLDER)
    return pattern.replace(str(_PLACEHOLDER), str(int(product_id)), 1)
