"""Cross-site request forgery guard for every state-changing request (POST, PUT, PATCH, DELETE).

SameSite=Lax keeps the session cookie off cross-site subresource requests, but not off every
request a hostile page can make (top-level form posts, same-site sibling domains, browsers
without SameSite). So, besides the cookie:

1. the body must be declared ``application/json``: a cross-site page can send only
   ``text/plain``, form and multipart bodies without a CORS preflight, and this service grants
   no cross-origin requests;
2. a browser must say the request comes from the site itself: ``Origin`` allowed by the same
   rule as the WebSocket upgrade (ALLOWED_ORIGINS, else exactly the request's own host), or,
   without ``Origin``, ``Sec-Fetch-Site: same-origin``/``none``. A request with neither header
   is not from a browser (the CLI, curl) and carries no ambient credentials to forge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from app.auth import origin_allowed
from app.errors import ApiError, ApiErrorCode, Handler

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def forgery_refusal(request: web.Request, allowed_origins: Sequence[str]) -> ApiError | None:
    """Why this state-changing request must be refused, or None when it may proceed."""
    if request.content_type != "application/json" or "Content-Type" not in request.headers:
        return ApiError(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "State-changing requests must be sent as Content-Type: application/json",
        )
    if "Origin" in request.headers:
        same_site = origin_allowed(request, list(allowed_origins))
    else:
        fetch_site = request.headers.get("Sec-Fetch-Site")
        same_site = fetch_site is None or fetch_site in _SAME_SITE_FETCH
    if not same_site:
        return ApiError.forbidden("Cross-origin request refused")
    return None


def csrf_middleware(allowed_origins: Sequence[str]) -> Middleware:
    """Refuse forged state-changing requests (415/403) before their handler runs."""
    allowed = tuple(allowed_origins)

    @web.middleware  # a plain function: safe requests (upgrades included) get no frame of it
    def middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.method in SAFE_METHODS:
            return handler(request)
        refusal = forgery_refusal(request, allowed)
        return handler(request) if refusal is None else _refuse(refusal)

    return middleware


async def _refuse(error: ApiError) -> web.StreamResponse:
    return error.response()
