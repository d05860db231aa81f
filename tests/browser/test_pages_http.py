"""The pages over plain HTTP (no browser): who may see what, security headers, CSP-clean HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest

from app.pages import CONTENT_SECURITY_POLICY, STATIC_DIR, TEMPLATES_DIR, safe_next
from tests.conftest import ClientFactory, login

PAGES = ("/login", "/admin/positions", "/admin/websocket")


async def test_pages_and_assets_carry_the_security_headers(app_client: ClientFactory) -> None:
    client = await app_client()
    await login(client, "admin", admin=True)
    for path in (
        *PAGES[1:],
        "/static/portfolio-stream.js",
        "/static/format.js",
        "/static/style.css",
    ):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 200, path
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"
    page = await client.get("/admin/positions")
    assert page.headers["Cache-Control"] == "no-store"
    assert page.content_type == "text/html"
    script = await client.get("/static/portfolio-stream.js")
    assert "javascript" in script.content_type


def test_content_security_policy_forbids_inline_code_and_framing() -> None:
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self' ws: wss:"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


async def test_visitor_without_session_is_sent_to_login_with_next(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    root = await client.get("/", allow_redirects=False)
    assert (root.status, root.headers["Location"]) == (302, "/admin/positions")
    for path in ("/admin/positions", "/admin/websocket?tab=1"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 302
        location = urlsplit(response.headers["Location"])
        assert location.path == "/login"
        assert parse_qs(location.query) == {"next": [path]}
    login_page = await client.get("/login")
    assert login_page.status == 200
    assert '<form id="login-form"' in await login_page.text()


async def test_stats_page_is_for_admins_only(app_client: ClientFactory) -> None:
    client = await app_client()
    await login(client, "bob")
    forbidden = await client.get("/admin/websocket")
    assert forbidden.status == 403
    assert "Admins only" in await forbidden.text()
    assert forbidden.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    own = await client.get("/admin/positions")
    assert own.status == 200


async def test_login_page_sends_a_signed_in_user_on_to_a_same_site_next(
    app_client: ClientFactory,
) -> None:
    client = await app_client()
    await login(client, "alice")
    onward = await client.get("/login?next=/admin/positions%3Fx%3D1", allow_redirects=False)
    assert (onward.status, onward.headers["Location"]) == (302, "/admin/positions?x=1")
    away = await client.get("/login?next=https://evil.example/", allow_redirects=False)
    assert away.headers["Location"] == "/admin/positions"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin/websocket", "/admin/websocket"),
        ("/admin/positions?x=1#top", "/admin/positions?x=1#top"),
        (None, "/admin/positions"),
        ("", "/admin/positions"),
        ("admin/positions", "/admin/positions"),
        ("https://evil.example/", "/admin/positions"),
        ("//evil.example/", "/admin/positions"),
        ("/\\evil.example/", "/admin/positions"),
        ("/admin\r\nSet-Cookie: x=1", "/admin/positions"),
    ],
)
def test_safe_next_only_allows_same_site_paths(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


class _Audit(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block, and every URL referenced."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script" and not names.get("src"):
            self.problems.append("inline <script>")
        for name, value in attrs:
            if name == "style":
                self.problems.append(f"style attribute on <{tag}>")
            if name.startswith("on"):
                self.problems.append(f"{name} handler on <{tag}>")
            if name in ("src", "href", "action") and value:
                self.urls.append(value)


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES_DIR.glob("*.html")))
def test_templates_are_csp_clean_and_self_contained(template: str) -> None:
    audit = _Audit()
    audit.feed((TEMPLATES_DIR / template).read_text())
    assert audit.problems == []
    for url in audit.urls:
        assert url.startswith("/"), f"{template} references {url} (no CDN, no other origin)"
        if url.startswith("/static/"):
            assert (STATIC_DIR / url.removeprefix("/static/")).is_file(), url


@pytest.mark.parametrize("script", sorted(p.name for p in STATIC_DIR.glob("*.js")))
def test_static_scripts_import_only_local_modules(script: str) -> None:
    source = (STATIC_DIR / script).read_text()
    for target in re.findall(r'^import .* from "([^"]+)";$', source, flags=re.MULTILINE):
        assert target.startswith("./"), target
        assert (STATIC_DIR / target).is_file(), target
    assert "eval(" not in source and "new Function" not in source
    assert "innerHTML" not in source  # text goes in as text: no markup injection
