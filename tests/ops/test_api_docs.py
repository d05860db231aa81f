"""docs/http-api.md and docs/websocket-api.md list exactly the codes, routes and events in code."""

from __future__ import annotations

import re

from aiohttp import web

from app import api
from app.errors import STATUS, ApiErrorCode
from app.events import EVENT_TYPES
from app.protocol import ErrorCode
from tests.ops.test_docs import DOCS, NOT_SETTINGS, SETTINGS


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of that level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_http_error_code_is_documented_with_its_status_and_only_those() -> None:
    errors = _section(_text("http-api.md"), "Errors")
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", errors, re.M))
    assert documented == {code.value: str(STATUS[code]) for code in ApiErrorCode}


def test_every_code_has_a_status() -> None:
    assert set(STATUS) == set(ApiErrorCode)


def test_every_http_route_is_documented_and_only_those() -> None:
    documented = set(re.findall(r"^\| `([A-Z]+) (/[^` ]*)` \|", _text("http-api.md"), re.M))
    served = {(route.method, route.path) for route in api.routes if isinstance(route, web.RouteDef)}
    assert documented == served


def test_http_api_names_only_real_variables() -> None:
    for variable in re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", _text("http-api.md")):
        assert variable in SETTINGS or variable in NOT_SETTINGS, variable


def test_websocket_error_table_lists_only_real_codes() -> None:
    table = _section(_text("websocket-api.md"), "Client → server")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert documented == {code.value for code in ErrorCode}


def test_websocket_api_names_exactly_the_bus_event_types() -> None:
    named = set(re.findall(r"`([a-z]+:[a-z]+)`", _text("websocket-api.md")))
    assert named == set(EVENT_TYPES)
