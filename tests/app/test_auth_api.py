"""Login, logout and /api/auth/me over HTTP: cookie flags, revocation, throttling (SPEC §8, §10)."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

from app.keys import STORE_KEY
from tests.app.support import PASSWORD, Client, cookie
from tests.conftest import ClientFactory
from tests.postgres import BACKENDS

STORE_BACKENDS = BACKENDS  # the auth and API paths on SQLite and on PostgreSQL


async def with_user(app_client: ClientFactory, **overrides: Any) -> Client:
    """An app whose store holds alice (password PASSWORD)."""
    return await app_client(**overrides)


async def post_login(client: Client, username: str, password: str) -> Any:
    return await client.post("/api/auth/login", json={"username": username, "password": password})


def session_cookie(response: Any) -> tuple[str, str]:
    """The session cookie's value and its raw Set-Cookie header."""
    header = next(h for h in response.headers.getall("Set-Cookie") if h.startswith("session="))
    parsed: SimpleCookie = SimpleCookie()
    parsed.load(header)
    return parsed["session"].value, header


async def test_login_sets_an_httponly_samesite_lax_session_cookie(
    app_client: ClientFactory,
) -> None:
    client = await with_user(app_client)
    response = await post_login(client, "alice", PASSWORD)
    assert response.status == 200
    body = await response.json()
    assert body["user"]["username"] == "alice" and body["user"]["isAdmin"] is False
    token, header = session_cookie(response)
    flags = [part.strip().lower() for part in header.split(";")]
    assert "httponly" in flags
    assert "samesite=lax" in flags
    assert "path=/" in flags
    assert "secure" not in flags
    assert len(token) >= 43


async def test_cookie_is_secure_when_configured(app_client: ClientFactory) -> None:
    client = await with_user(app_client, cookie_secure=True)
    response = await post_login(client, "alice", PASSWORD)
    _, header = session_cookie(response)
    assert "secure" in [part.strip().lower() for part in header.split(";")]


async def test_me_answers_for_the_session_and_401_without(app_client: ClientFactory) -> None:
    client = await with_user(app_client)
    token, _ = session_cookie(await post_login(client, "alice", PASSWORD))
    client.session.cookie_jar.clear()
    response = await client.get("/api/auth/me", headers=cookie(token))
    assert response.status == 200
    assert (await response.json())["user"]["username"] == "alice"
    anonymous = await client.get("/api/auth/me")
    assert anonymous.status == 401
    assert (await anonymous.json())["error"] == "unauthorized"
    forged = await client.get("/api/auth/me", headers=cookie("not-a-session"))
    assert forged.status == 401


async def test_wrong_password_and_unknown_user_get_the_same_401(app_client: ClientFactory) -> None:
    client = await with_user(app_client)
    wrong = await post_login(client, "alice", "nope")
    unknown = await post_login(client, "mallory", "nope")
    assert wrong.status == unknown.status == 401
    assert await wrong.json() == await unknown.json()
    assert "session" not in wrong.cookies


async def test_logout_revokes_the_session_server_side(app_client: ClientFactory) -> None:
    client = await with_user(app_client)
    token, _ = session_cookie(await post_login(client, "alice", PASSWORD))
    client.session.cookie_jar.clear()
    response = await client.post("/api/auth/logout", json={}, headers=cookie(token))
    assert response.status == 200
    assert response.cookies["session"].value == ""  # the browser is told to drop it
    # A copy of the old cookie no longer works anywhere.
    assert (await client.get("/api/auth/me", headers=cookie(token))).status == 401
    assert (await client.get("/api/portfolio", headers=cookie(token))).status == 401
    assert await client.app[STORE_KEY].session_user(token) is None


async def test_malformed_login_bodies_are_400(app_client: ClientFactory) -> None:
    client = await app_client()
    for body in ('{"username": "alice"}', "[1]", "not json", '{"username": 1, "password": 2}'):
        response = await client.post(
            "/api/auth/login", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 400, body
        assert (await response.json())["error"] == "bad_request"


async def test_repeated_failures_are_throttled_with_429_and_retry_after(
    app_client: ClientFactory,
) -> None:
    client = await with_user(app_client, login_max_failures=3, login_lockout_s=120)
    for _ in range(3):
        assert (await post_login(client, "alice", "wrong")).status == 401
    locked = await post_login(client, "alice", PASSWORD)  # even the right password waits
    assert locked.status == 429
    assert 0 < int(locked.headers["Retry-After"]) <= 121
    assert (await locked.json())["error"] == "too_many_attempts"


async def test_a_success_before_the_limit_resets_the_failure_count(
    app_client: ClientFactory,
) -> None:
    client = await with_user(app_client, login_max_failures=3)
    for _ in range(2):
        assert (await post_login(client, "alice", "wrong")).status == 401
    assert (await post_login(client, "alice", PASSWORD)).status == 200
    for _ in range(2):
        assert (await post_login(client, "alice", "wrong")).status == 401
    assert (await post_login(client, "alice", PASSWORD)).status == 200


async def test_address_lockout_is_separate_and_higher_than_the_user_lockout(app_client) -> None:
    """Behind a proxy everyone shares an address: typos by several users lock only those users."""
    client = await app_client(login_max_failures=2, login_max_failures_per_address=5)
    for name in ("alice", "bob"):
        for _ in range(2):
            response = await client.post(
                "/api/auth/login", json={"username": name, "password": "wrong"}
            )
            assert response.status == 401
        locked = await client.post("/api/auth/login", json={"username": name, "password": "wrong"})
        assert locked.status == 429
    # Four failures from this address so far: carol still gets in.
    ok = await client.post(
        "/api/auth/login", json={"username": "carol", "password": "correct horse"}
    )
    assert ok.status == 200
    # The fifth failure locks the address for everyone, and carol's success did not reset it.
    assert (
        await client.post("/api/auth/login", json={"username": "carol", "password": "nope"})
    ).status == 401
    blocked = await client.post(
        "/api/auth/login", json={"username": "carol", "password": "correct horse"}
    )
    assert blocked.status == 429
    assert int(blocked.headers["Retry-After"]) > 0
