"""Product links built once per endpoint and request equal ``url_for``'s own."""

from __future__ import annotations

from flask import url_for

from webapp.urls import product_url


def test_product_url_is_url_for(app):
    for script_root in ("", "/shop"):
        with app.test_request_context("/", base_url=f"http://localhost{script_root}"):
            for endpoint in ("shop.product_detail", "shop.product_image", "taste.api_product_like"):
                for pid in (1, 42, 1_000_000, 42):
                    assert product_url(endpoint, pid) == url_for(endpoint, product_id=pid)
            assert product_url("shop.product_detail", 7).startswith(f"{script_root}/products/")
