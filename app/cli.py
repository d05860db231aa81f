"""`portfolio-stream` — the one entry point: serve, simulate, users, sessions, db, trade.

This is the only place that reads settings from the environment and configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from pydantic import ValidationError

from alpaca_bridge.simulator.standalone import run_standalone, standalone_broker
from app.broker import BrokerConfigError
from app.process_tuning import FileLimitTooLow
from app.server import serve
from app.store import InvalidUsername, StoreUnavailable, UserExists
from app.store_select import store_for
from app.user_store import UserStore
from config.logging import configure_logging
from config.settings import Settings, describe_validation_error

EXIT_USAGE = 2


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        print(describe_validation_error(error), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise SystemExit("passwords do not match")
    if not password:
        raise SystemExit("password must not be empty")
    return password


async def _with_store(settings: Settings, action: Callable[[UserStore], Awaitable[int]]) -> int:
    store = store_for(settings)
    try:
        await store.open()
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return await action(store)
    finally:
        await store.close()


def cmd_users(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run(store: UserStore) -> int:
        if args.users_command == "add":
            password = _read_password(args)
            try:
                user = await store.create_user(args.username, password, is_admin=args.admin)
            except (UserExists, InvalidUsername, ValueError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            role = "admin" if user.is_admin else "user"
            print(f"created {role} {user.username} ({user.id})")
        elif args.users_command == "list":
            for user in await store.list_users():
                role = "admin" if user.is_admin else "user"
                print(f"{user.id}\t{user.username}\t{role}")
        elif args.users_command == "remove":
            if not await store.remove_user(args.username):
                print(f"error: no user {args.username!r}", file=sys.stderr)
                return 1
            print(f"removed {args.username}")
        elif args.users_command == "passwd":
            if not await store.set_password(args.username, _read_password(args)):
                print(f"error: no user {args.username!r}", file=sys.stderr)
                return 1
            print(f"password changed for {args.username}")
        return 0

    return asyncio.run(_with_store(settings, run))


def cmd_sessions(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run(store: UserStore) -> int:
        user = await store.get_user_by_username(args.username)
        if user is None:
            print(f"error: no user {args.username!r}", file=sys.stderr)
            return 1
        ttl = args.ttl_hours * 3600 if args.ttl_hours else settings.session_ttl_hours * 3600
        print(await store.create_session(user.id, ttl))
        return 0

    return asyncio.run(_with_store(settings, run))


# The CLI's admin session lives only as long as one request; it is revoked right after, and
# expires on its own if the command is killed mid-request.
TRADE_SESSION_TTL_S = 300
# Above the service's own bound on the broker (BROKER_REST_TIMEOUT_S) so its 503 arrives first.
TRADE_REQUEST_SLACK_S = 20


def cmd_trade(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        qty = Decimal(args.qty)
    except InvalidOperation:
        print("error: QTY must be a number", file=sys.stderr)
        return EXIT_USAGE
    base = args.url or f"http://127.0.0.1:{settings.port}"

    async def run(store: UserStore) -> int:
        admins = [u for u in await store.list_users() if u.is_admin]
        if args.as_admin:
            admins = [u for u in admins if u.username == args.as_admin]
        if not admins:
            print(
                "error: no admin user to place the trade as "
                "(create one: portfolio-stream users add NAME --admin)",
                file=sys.stderr,
            )
            return 1
        token = await store.create_session(admins[0].id, TRADE_SESSION_TTL_S)
        try:
            timeout_s = settings.broker_rest_timeout_s + TRADE_REQUEST_SLACK_S
            return await _post_trade(
                base, token, args.username, args.symbol, args.side, qty, timeout_s
            )
        finally:
            await store.revoke_session(token)

    return asyncio.run(_with_store(settings, run))


async def _post_trade(
    base: str,
    token: str,
    username: str,
    symbol: str,
    side: str,
    qty: Decimal,
    timeout_s: float,
) -> int:
    body = {"username": username, "symbol": symbol.upper(), "side": side, "qty": str(qty)}
    try:
        async with (
            aiohttp.ClientSession(cookies={"session": token}) as http,
            http.post(
                f"{base}/api/admin/test-trade",
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response,
        ):
            payload: dict[str, Any] = await response.json(content_type=None)
            if response.status >= 400:
                print(f"error: {payload.get('message', response.reason)}", file=sys.stderr)
                return 1
    except aiohttp.ClientError as exc:
        print(f"error: cannot reach the service at {base}: {exc}", file=sys.stderr)
        return 1
    order = payload["order"]
    print(
        f"order {order.get('orderId')} {order.get('side')} {order.get('qty')} "
        f"{order.get('symbol')} for {order.get('username')}: {order.get('status')}"
    )
    return 0


def cmd_db(_: argparse.Namespace) -> int:
    """``db upgrade``: apply pending schema migrations (serve does too, at start)."""
    store = store_for(load_settings())

    async def run() -> int:
        try:
            upgrade = await store.open()
        except StoreUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        await store.close()
        print(upgrade.describe())
        return 0

    return asyncio.run(run())


def cmd_serve(_: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        return serve(settings)
    except (BrokerConfigError, FileLimitTooLow) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_simulate(_: argparse.Namespace) -> int:
    """The simulated broker on its own, for several nodes to share (BROKER=alpaca there)."""
    settings = load_settings()
    try:
        broker = standalone_broker(settings)
    except BrokerConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings)
    try:
        asyncio.run(run_standalone(broker))
    except OSError as exc:
        print(
            f"error: cannot listen on {settings.sim_host}:{settings.sim_port}: {exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler was in place
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portfolio-stream", description="Streams traders' live portfolios to their browsers."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_command = commands.add_parser("serve", help="run the service (configured by environment)")
    serve_command.set_defaults(func=cmd_serve)

    simulate = commands.add_parser(
        "simulate",
        help="run the simulated broker alone on SIM_HOST:SIM_PORT for several nodes to share",
    )
    simulate.set_defaults(func=cmd_simulate)

    users = commands.add_parser("users", help="manage users")
    users.set_defaults(func=cmd_users)
    users_commands = users.add_subparsers(dest="users_command", required=True)
    add = users_commands.add_parser("add", help="create a user (password from prompt or stdin)")
    add.add_argument("username")
    add.add_argument("--admin", action="store_true", help="grant admin rights")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    users_commands.add_parser("list", help="list users")
    remove = users_commands.add_parser("remove", help="delete a user and their sessions")
    remove.add_argument("username")
    passwd = users_commands.add_parser("passwd", help="change a user's password")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")

    sessions = commands.add_parser("sessions", help="manage sessions")
    sessions.set_defaults(func=cmd_sessions)
    sessions_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    create = sessions_commands.add_parser(
        "create", help="print a new session id (use as Cookie: session=...)"
    )
    create.add_argument("username")
    create.add_argument("--ttl-hours", type=float, default=None)

    database = commands.add_parser("db", help="manage the database (DATABASE_URL)")
    database.set_defaults(func=cmd_db)
    database_commands = database.add_subparsers(dest="db_command", required=True)
    database_commands.add_parser("upgrade", help="apply pending schema migrations")

    trade = commands.add_parser("trade", help="place a market order through a user's account")
    trade.set_defaults(func=cmd_trade)
    trade.add_argument("username")
    trade.add_argument("symbol")
    trade.add_argument("side", choices=["buy", "sell"])
    trade.add_argument("qty")
    trade.add_argument("--url", help="service base URL (default http://127.0.0.1:$PORT)")
    trade.add_argument("--as-admin", help="admin user to act as (default: the first admin)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
