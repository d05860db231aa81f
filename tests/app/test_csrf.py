"""Cross-site request forgery: state-changing requests must be JSON from the site itself.

SameSite=Lax alone let a cross-origin ``text/plain`` POST carry the admin's cookie. Every
POST/PUT/PATCH/DELETE now needs ``Content-Type: application/json`` (which a cross-site page
cannot send without a CORS preflight this service never grants) and, from a browser, a
same-origin ``Origin`` (or ``Sec-Fetch-Site: same-origin``/``none``). Clients that are not
browsers send neither header and are unaffected (the CLI).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.app.support import PASSWORD, Client, session_for
from tests.conftest import ClientFactory

TRADE = {"username": "alice", "symbol": "AAPL", "side": "buy", "qty": "1"}
CREDENTIALS = {"username": "alice", "password": PASSWORD}


def own_origin(client: Client) -> str:
    return f"http://{client.host}:{client.port}"


async def post(client: Client, path: str, body: Any, **headers: str) -> tuple[int, Any]:
    response = await client.post(path, data=json.dumps(body), headers=headers)
    payload = await response.json(content_type=None)
    return response.status, payload


async def test_a_cross_origin_text_plain_test_trade_with_the_admin_cookie_is_refused(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    root = await session_for(client, "root", admin=True)
    # What <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) on evil.example sends.
    status, body = await post(
        client,
        "/api/admin/test-trade",
        TRADE,
        **root.headers,
        **{"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert status in (403, 415), body
    status, body = await post(
        client,
        "/api/admin/test-trade",
        TRADE,
        **root.headers,
        **{"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"},
    )
    assert status in (403, 415), body


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_state_changing_requests_must_be_json(
    app_client: ClientFactory, content_type: str | None
) -> None:
    client = await app_client()
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in ("/api/auth/login", "/api/auth/logout", "/api/admin/test-trade"):
        status, body = await post(client, path, CREDENTIALS, **headers)
        assert status == 415, (path, body)
        assert body["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # sandboxed frames and some redirects
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site's page
    ],
)
async def test_a_cross_origin_login_is_refused(
    app_client: ClientFactory, headers: dict[str, str]
) -> None:
    """Login CSRF would sign the victim in as the attacker."""
    client = await app_client()
    status, body = await post(
        client, "/api/auth/login", CREDENTIALS, **{"Content-Type": "application/json", **headers}
    )
    assert status == 403, body
    assert body["error"] == "forbidden"


async def test_the_sites_own_pages_and_non_browser_clients_get_through(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    for headers in (
        {"Origin": own_origin(client)},
        {"Origin": own_origin(client), "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar, a bookmark
        {},  # not a browser: the CLI, curl
    ):
        status, body = await post(client, "/api/auth/login", CREDENTIALS, **json_type, **headers)
        assert status == 200, (headers, body)


async def test_the_clis_admin_request_still_places_its_trade(app_client: ClientFactory) -> None:
    """`portfolio-stream trade` posts JSON with an admin session and no browser headers."""
    client = await app_client()
    root = await session_for(client, "root", admin=True)
    response = await client.post("/api/admin/test-trade", json=TRADE, headers=root.headers)
    body = await response.json()
    # This app runs without a broker: reaching the handler's broker check is getting through.
    assert (response.status, body["error"]) == (503, "broker_unavailable"), body


async def test_configured_origins_also_govern_state_changing_requests(
    app_client: ClientFactory,
) -> None:
    client = await app_client(allowed_origins=["https://app.example.com"])
    json_type = {"Content-Type": "application/json"}
    ok, _ = await post(
        client, "/api/auth/login", CREDENTIALS, **json_type, Origin="https://app.example.com"
    )
    assert ok == 200
    for origin in (
        own_origin(client),
        "https://evilapp.example.com",
        "https://app.example.com.evil",
    ):
        status, _ = await post(client, "/api/auth/login", CREDENTIALS, **json_type, Origin=origin)
        assert status == 403, origin


async def test_the_own_host_rule_never_matches_by_suffix(app_client: ClientFactory) -> None:
    """With ALLOWED_ORIGINS empty, ``evilapp.example.com`` is not ``app.example.com``."""
    client = await app_client()
    alice = await session_for(client, "alice")
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Host": "app.example.com",
        **alice.headers,
    }
    for origin in (
        "http://evilapp.example.com",
        "http://app.example.com.evil.net",
        "http://evil.net/app.example.com",
        "https://app.example.com:8443",
    ):
        refused = await client.get("/ws/portfolio", headers={**upgrade, "Origin": origin})
        assert refused.status == 403, origin
        status, _ = await post(
            client,
            "/api/auth/login",
            CREDENTIALS,
            **{"Content-Type": "application/json", "Host": "app.example.com", "Origin": origin},
        )
        assert status == 403, origin
    status, _ = await post(
        client,
        "/api/auth/login",
        CREDENTIALS,
        **{
            "Content-Type": "application/json",
            "Host": "app.example.com",
            "Origin": "http://app.example.com",
        },
    )
    assert status == 200
