"""Running the service: listener, systemd protocol, signals, bounded graceful shutdown (SPEC §9).

Start-up: the app's cleanup contexts run (store, bus, broker streams, stream manager), then the
listener starts — the socket systemd passed (LISTEN_FDS, socket activation) or a TCP socket on
HOST:PORT — and only then is ``READY=1`` sent. While serving, the event loop itself pings the
systemd watchdog and refreshes ``STATUS=``.

SIGTERM/SIGINT: ``STOPPING=1``, then the graceful sequence (stop listening, ``Lifecycle.shutdown``:
``/readyz`` and upgrades 503, stop broker streams, flush batches, close sockets with 1001, then
the cleanup contexts), bounded by SHUTDOWN_TIMEOUT_S; exit 0 when it completes in time. With
socket activation the listening socket stays open in systemd between the old and the new
process, so a restart queues new connections in the backlog instead of refusing them.

SIGHUP reopens LOG_FILE (after logrotate moved it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, MutableMapping

from aiohttp import web

from app.connection_budget import BudgetedSockSite, BudgetedTCPSite, ConnectionBudget
from app.factory import create_app
from app.keys import (
    BROKER_KEY,
    BUDGET_KEY,
    DEMO_LOGINS_KEY,
    LIFECYCLE_KEY,
    METRICS_KEY,
    STREAM_KEY,
)
from app.process_tuning import ensure_file_limit, freeze_startup_heap, timed_gc, tune_gc
from app.store import StoreUnavailable
from app.systemd import Notifier, describe_address, inherited_sockets, supervise, watchdog_interval
from config.logging import configure_logging, get_logger
from config.settings import Settings

log = get_logger()

LISTEN_BACKLOG = 1024
# In-flight HTTP handlers may use this share of SHUTDOWN_TIMEOUT_S before aiohttp cancels them;
# the rest is left for the cleanup contexts (broker, bus, store) within the same bound.
HANDLER_SHARE_OF_SHUTDOWN = 0.5


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def service_status(app: web.Application) -> str:
    """The one-line STATUS= shown by ``systemctl status``."""
    stream = app[STREAM_KEY]
    users = len(stream.connections_by_user())
    text = f"{stream.active_connections} WebSocket connections ({users} users)"
    accounts = [a for a in app[BROKER_KEY].accounts_status() if a["status"] != "standby"]
    up = sum(1 for account in accounts if account["status"] == "connected")
    text += f"; broker streams {up}/{len(accounts)} up"
    if app[LIFECYCLE_KEY].draining:
        text = "Draining: " + text
    return text


def _sites(
    runner: web.AppRunner,
    settings: Settings,
    inherited: list[socket.socket],
    budget: ConnectionBudget,
) -> list[tuple[web.BaseSite, str]]:
    """The listeners with their log line: systemd's sockets if it passed any, else HOST:PORT."""
    if inherited:
        return [
            (
                BudgetedSockSite(runner, sock, budget=budget),
                f"[STARTUP] Listening on inherited socket http://{describe_address(sock)} "
                "(socket activation; HOST/PORT ignored)",
            )
            for sock in inherited
        ]
    site = BudgetedTCPSite(
        runner, settings.host, settings.port, budget=budget, backlog=LISTEN_BACKLOG
    )
    return [(site, f"[STARTUP] Listening on http://{settings.host}:{settings.port}")]


async def run_service(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    environ: MutableMapping[str, str] | None = None,
    reopen_logs: Callable[[], None] | None = None,
    build_app: Callable[[Settings], web.Application] = create_app,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``), then shut down within SHUTDOWN_TIMEOUT_S."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, reopen_logs)

    notifier = Notifier.from_environ(environ)
    # Taken (and LISTEN_* unset) before anything else runs, so nothing else can inherit them.
    inherited = inherited_sockets(environ)
    app = build_app(settings)
    # handler_cancellation: a handler still running once shutdown_timeout passed is cancelled.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s * HANDLER_SHARE_OF_SHUTDOWN,
        # Runs from a connection's start too: one that never completes a request is closed.
        keepalive_timeout=settings.http_header_timeout_s,
    )
    supervisor: asyncio.Task[None] | None = None
    gc_timing = contextlib.ExitStack()
    try:
        await _set_up(runner)
        for site, listening in _sites(runner, settings, inherited, app[BUDGET_KEY]):
            await site.start()
            log.info(
                listening, _mode=settings.broker_mode, _enabled=settings.enable_realtime_portfolio
            )
        _log_demo_logins(app, settings)
        freeze_startup_heap()
        tune_gc(settings.gc_thresholds)
        gc_timing.enter_context(timed_gc(app[METRICS_KEY].observe_gc_pause))
        notifier.ready(service_status(app))
        supervisor = asyncio.create_task(
            supervise(notifier, lambda: service_status(app), watchdog_s=watchdog_interval(environ)),
            name="systemd-supervisor",
        )
        await stop.wait()
        log.info("[PortfolioStream] Signal received: starting graceful shutdown")
        notifier.stopping("Draining: " + service_status(app))
        try:
            await asyncio.wait_for(runner.cleanup(), timeout=settings.shutdown_timeout_s)
        except TimeoutError:
            log.error(
                "[PortfolioStream] Shutdown exceeded SHUTDOWN_TIMEOUT_S; exiting anyway",
                timeoutS=settings.shutdown_timeout_s,
            )
            return 1
        return 0
    finally:
        gc_timing.close()
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


async def _set_up(runner: web.AppRunner) -> None:
    """Enter the cleanup contexts (store, bus, broker, stream manager); when one fails, leave
    the ones already entered before the error propagates."""
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()
        raise


def _on_sighup(reopen_logs: Callable[[], None] | None) -> None:
    if reopen_logs is not None:
        reopen_logs()
    log.info("[PortfolioStream] SIGHUP received: log file reopened")


def _log_demo_logins(app: web.Application, settings: Settings) -> None:
    for login in app[DEMO_LOGINS_KEY]:
        log.info(
            f"[STARTUP] Demo login: {login.username} / {login.password} at "
            f"http://localhost:{settings.port}/login"
        )


def serve(settings: Settings) -> int:
    """Run the service; raises FileLimitTooLow before anything starts if limits cannot fit."""
    ensure_file_limit(settings)
    sink = configure_logging(settings)
    install_uvloop()
    try:
        return asyncio.run(run_service(settings, reopen_logs=sink.reopen))
    except (OSError, StoreUnavailable) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
