"""Security headers and upload checks shared by every area."""

from __future__ import annotations

from flask import Response, session

# Everything the site loads comes from itself: no CDN, no inline scripts.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def add_security_headers(response: Response) -> Response:
    """Set the baseline headers unless a view chose its own."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    # A signed-in page is that person's (their name, preferences, the admin's forms): no
    # shared cache may keep it. Responses that chose their own caching (static files and
    # product photos say public) keep it. ``in`` does not mark the session as read.
    cache = response.cache_control
    if "_user_id" in session and not (cache.public or cache.private or cache.no_store):
        cache.private = True
    return response
