"""Exactly one node consumes each broker account, and another takes over when it dies, losing
no fill: real nodes killed (SIGKILL), paused (SIGSTOP) and stopped (SIGTERM), Redis restarted
empty, the broker's REST failing, while the simulated broker places orders on every account.

What is checked, from outside the nodes: who holds each lease (Redis), what the broker saw
(its ``trade_updates`` connection history: a takeover is a new authenticated connection; two
open at once for one key is an overlap, bounded by the takeover handshake), and what every
browser shows (tabs on every node) against the broker's positions and fills. The takeover
times are printed (``pytest -s``); ``FAILOVER_KILLS`` sets the kill loop's length (``make soak``
runs it 100 times) and ``FAILOVER_RESULTS`` a JSON file for its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.nodes.browser import LiveTab, Tab, eventually, qty_map
from tests.nodes.conftest import TRADERS, ClusterFactory, Sessions, World
from tests.nodes.failover import (
    FAILOVER_SETTINGS,
    LEASE_RENEW_S,
    OVERLAP_BOUND_S,
    TAKEOVER_BOUND_S,
    Holder,
    Takeovers,
    fencing_epoch,
    fill_mismatches,
    holders,
    lease_holder,
    node_by_id,
    order_fills,
    redis_client,
    settled_truth,
    trading,
    wait_one_consumer_each,
    wait_stats_agree,
    wait_taken_over,
    wall,
)
from tests.nodes.harness import Account, Cluster

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("FAILOVER_KILLS", "10"))
RESULTS = os.environ.get("FAILOVER_RESULTS")
ORDER_INTERVAL_S = 0.3
STARTED_WITHIN_S = 30.0  # every account consumed (and spread) after the cluster starts
CONVERGED_WITHIN_S = 20.0
# A lost lease is given up at the woken node's first step: within a renew interval and the
# stream's close, with room for a loaded machine.
STOPS_WITHIN_S = 5.0
STOPPED_CONSUMING = re.compile(r"\[AlpacaStream\] Lease [^\n]*stopped consuming[^\n]*account:")


def failover_cluster(own_cluster: ClusterFactory, **overrides: Any) -> Cluster:
    cluster = own_cluster(**{**FAILOVER_SETTINGS, **overrides})
    # A second stream of one key is let in and measured, never refused: two consumers of one
    # account would show as an overlap.
    cluster.simulator.control.set_stream_settings(trading_single_connection=False)
    return cluster


@contextlib.asynccontextmanager
async def order_flow(cluster: Cluster, accounts: Sequence[Account]) -> AsyncIterator[None]:
    sim = cluster.simulator.control
    await asyncio.to_thread(
        sim.start_order_flow, ORDER_INTERVAL_S, [account.api_key for account in accounts]
    )
    try:
        yield
    finally:
        await asyncio.to_thread(sim.stop_order_flow)


async def tabs_everywhere(
    http: aiohttp.ClientSession, cluster: Cluster, tokens: dict[str, str]
) -> list[tuple[str, Tab]]:
    return [
        (user, await Tab.open(http, node.url, token))
        for node in cluster.alive
        for user, token in tokens.items()
    ]


async def check_browsers_equal_broker(
    http: aiohttp.ClientSession,
    cluster: Cluster,
    accounts: Sequence[Account],
    tokens: dict[str, str],
) -> int:
    """With the order flow stopped: a fresh tab of every user on every live node shows the
    broker's positions, and each order it shows filled exactly what the broker filled of it.
    Returns how many orders were so checked (a tab shows the most recent ones)."""
    truth = await settled_truth(cluster, accounts)
    sim = cluster.simulator.control
    filled = {a.username: await asyncio.to_thread(order_fills, sim, a) for a in accounts}
    checked: dict[str, int] = {}
    tabs = await tabs_everywhere(http, cluster, tokens)
    try:
        for user, tab in tabs:
            await tab.wait(
                lambda t, q=truth[user]: t.qty() == q,
                f"{user}'s tab on {tab.node_url} showing the broker's {truth[user]}",
                CONVERGED_WITHIN_S,
            )
            assert qty_map((await tab.resync())["positions"]) == truth[user]
            assert fill_mismatches(tab, filled[user]) == [], tab.node_url
            shown = sum(1 for o in tab.orders if o in filled[user])
            checked[user] = max(checked.get(user, 0), shown)
    finally:
        for _, tab in tabs:
            await tab.close()
    return sum(checked.values())


async def check_overlaps(cluster: Cluster, accounts: Sequence[Account]) -> dict[str, float]:
    sim = cluster.simulator.control
    overlaps = {
        a.username: (await asyncio.to_thread(sim.trading_streams, a.api_key)).overlap.max_s
        for a in accounts
    }
    assert all(seconds < OVERLAP_BOUND_S for seconds in overlaps.values()), overlaps
    return overlaps


async def login_all(sessions: Sessions, cluster: Cluster, users: Sequence[str]) -> dict[str, str]:
    return {user: await sessions.token(cluster[0].url, user) for user in users}


def total_fills(cluster: Cluster, accounts: Sequence[Account]) -> int:
    sim = cluster.simulator.control
    return sum(len(sim.fills(a.api_key)) for a in accounts)


@pytest.mark.timeout(90 + 20 * KILLS)
async def test_killing_the_holder_again_and_again_loses_no_fill(
    world: World, own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster = failover_cluster(own_cluster)
    accounts = world.accounts
    redis = redis_client(cluster)
    tokens = await login_all(sessions, cluster, TRADERS)
    await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    takeovers = Takeovers()
    async with order_flow(cluster, accounts):
        for turn in range(KILLS):
            held = await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
            target = accounts[turn % len(accounts)].username
            victim = node_by_id(cluster, held[target].node)
            affected = [a for a in accounts if held[a.username].node == victim.id]
            died_at = wall()
            victim.kill()  # SIGKILL: no release, no goodbye; the lease ends with its TTL
            fresh = cluster.spawn()
            for account in affected:
                holder, stream = await wait_taken_over(
                    cluster, redis, account, dead=victim.id, since=died_at,
                    timeout_s=TAKEOVER_BOUND_S,
                )  # fmt: skip
                took = takeovers.add(died_at, stream)
                assert holder.epoch > held[account.username].epoch
                assert took <= TAKEOVER_BOUND_S, (account.username, took)
            await asyncio.to_thread(fresh.wait_ready)
    held = await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    await wait_stats_agree(await sessions.admin(cluster.alive[0].url), cluster, held, 10)
    checked = await check_browsers_equal_broker(http, cluster, accounts, tokens)
    overlaps = await check_overlaps(cluster, accounts)
    fills = await asyncio.to_thread(total_fills, cluster, accounts)
    summary = {
        "kills": KILLS,
        "takeovers": takeovers.summary(),
        "takeoverSeconds": [round(s, 3) for s in takeovers.seconds],
        "fills": fills,
        "ordersCheckedAgainstFills": checked,
        "maxOverlapSeconds": max(overlaps.values()),
    }
    print(f"\nfailover kill loop: {json.dumps(summary)}")
    if RESULTS:
        await asyncio.to_thread(
            Path(RESULTS).write_text, json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
    assert fills > 0
    for node in cluster.alive:
        assert node.tracebacks() == 0, node.log()


async def test_a_paused_holder_that_wakes_after_losing_its_lease_changes_nothing(
    world: World, own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster = failover_cluster(own_cluster)
    accounts = world.accounts
    alice = accounts[0]
    redis = redis_client(cluster)
    tokens = await login_all(sessions, cluster, [alice.username])
    held = await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    sleeper = node_by_id(cluster, held[alice.username].node)
    sim = cluster.simulator.control
    [old_stream] = [c for c in await asyncio.to_thread(trading, sim, alice) if c.closed_at is None]
    watchers = [n for n in cluster.alive if n is not sleeper]
    tab = await Tab.open(http, watchers[0].url, tokens[alice.username])
    user_id = tab.connected["userId"]
    await tab.close()
    async with order_flow(cluster, [alice]):
        stopped_at = wall()
        sleeper.proc.send_signal(signal.SIGSTOP)
        try:
            holder, _ = await wait_taken_over(
                cluster, redis, alice, dead=sleeper.id, since=stopped_at,
                timeout_s=TAKEOVER_BOUND_S,
            )  # fmt: skip
            assert holder.epoch > held[alice.username].epoch
            # Fills go on under the new holder, and reach the paused node's socket too.
            before = len(await asyncio.to_thread(sim.fills, alice.api_key))
            await eventually(
                lambda: len(sim.fills(alice.api_key)) > before + 3, "fills after the takeover"
            )
            await eventually(
                lambda: fencing_epoch(redis, user_id) == holder.epoch,
                "the new holder's writes landing",
            )
        finally:
            seen = FencingWatch(redis, user_id)
            sleeper.proc.send_signal(signal.SIGCONT)
        try:

            async def old_stream_closed() -> bool:
                rows = await asyncio.to_thread(trading, sim, alice)
                return any(c.id == old_stream.id and c.closed_at is not None for c in rows)

            await eventually(old_stream_closed, "the woken node closing its stream", STOPS_WITHIN_S)
            await eventually(
                lambda: STOPPED_CONSUMING.search(sleeper.log()),
                "the woken node logging that it stopped consuming",
            )
        finally:
            seen.stop()
        assert sleeper.alive
    # Never the woken node's epoch again: only the new holder's, or a later grant's (the
    # woken node counts among the live nodes again, and the spreading may move a lease).
    assert seen.values and min(seen.values) == holder.epoch, seen.values
    await wait_fenced_by_current_grant(redis, alice.username, user_id, holder)
    tokens_all = await login_all(sessions, cluster, [alice.username])
    await check_browsers_equal_broker(http, cluster, [alice], tokens_all)
    for node in cluster.alive:
        assert node.tracebacks() == 0, node.log()


async def test_a_paused_holder_that_missed_fills_overwrites_nothing_when_it_wakes(
    world: World, own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    """The paused holder's view is made older than the broker's: its stream is cut while it
    sleeps, and fills follow. Whatever it still has queued or buffered when it wakes would
    put older quantities back; none may land."""
    cluster = failover_cluster(own_cluster)
    accounts = world.accounts
    alice = accounts[0]
    redis = redis_client(cluster)
    sim = cluster.simulator.control
    admin = await sessions.admin(cluster[0].url)
    tokens = await login_all(sessions, cluster, [alice.username])
    held = await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    sleeper = node_by_id(cluster, held[alice.username].node)
    async with order_flow(cluster, [alice]):
        stopped_at = wall()
        sleeper.proc.send_signal(signal.SIGSTOP)
        try:
            holder, _ = await wait_taken_over(
                cluster, redis, alice, dead=sleeper.id, since=stopped_at,
                timeout_s=TAKEOVER_BOUND_S,
            )  # fmt: skip
            before = len(await asyncio.to_thread(sim.fills, alice.api_key))
            await eventually(
                lambda: len(sim.fills(alice.api_key)) > before + 3, "fills after the takeover"
            )
            # Cut both streams: the sleeper sees nothing after this; the new holder reconnects.
            cut_at = wall()
            await asyncio.to_thread(sim.drop_trading, alice.api_key)
            seen_by_sleeper = {f.symbol for f in await asyncio.to_thread(sim.fills, alice.api_key)}
            await wait_taken_over(
                cluster, redis, alice, dead=sleeper.id, since=cut_at, timeout_s=TAKEOVER_BOUND_S
            )
        except BaseException:
            sleeper.proc.send_signal(signal.SIGCONT)
            raise
    try:
        # Newer than anything the sleeper saw, on every symbol it saw.
        for symbol in sorted(seen_by_sleeper):
            await admin.trade(holder_url(cluster, holder), alice.username, symbol, "buy", 1)
        truth = await settled_truth(cluster, [alice])
        watcher = await Tab.open(http, holder_url(cluster, holder), tokens[alice.username])
        await watcher.wait(
            lambda t: t.qty() == truth[alice.username],
            "the new holder's state equal to the broker's",
            CONVERGED_WITHIN_S,
        )
    finally:
        sleeper.proc.send_signal(signal.SIGCONT)
    try:
        await eventually(
            lambda: STOPPED_CONSUMING.search(sleeper.log()),
            "the woken node logging that it stopped consuming",
        )
        # Room for whatever the woken node had in flight to arrive, were it let through.
        await eventually(
            lambda: sim.trading_streams(alice.api_key).open == 1, "one stream of the account"
        )
        await asyncio.sleep(LEASE_RENEW_S)  # no event to await: the absence of a write
        assert watcher.qty() == truth[alice.username]
    finally:
        await watcher.close()
    await wait_fenced_by_current_grant(redis, alice.username, user_id_of(watcher), holder)
    await check_browsers_equal_broker(http, cluster, [alice], tokens)


async def wait_fenced_by_current_grant(
    redis: Any, username: str, user_id: str, taker: Holder
) -> None:
    """Until the user's state carries the epoch of the account's current grant: the taker's,
    or a later one's (a rebalance after the woken node rejoined), never an older one."""

    def current() -> bool:
        holder = lease_holder(redis, username)
        fenced = fencing_epoch(redis, user_id)
        assert fenced is None or fenced >= taker.epoch, (fenced, taker)
        return holder is not None and holder.epoch >= taker.epoch and fenced == holder.epoch

    await eventually(current, f"{username}'s state fenced by its current grant")


def holder_url(cluster: Cluster, holder: Holder) -> str:
    return node_by_id(cluster, holder.node).url


def user_id_of(tab: Tab) -> str:
    return str(tab.connected["userId"])


class FencingWatch:
    """Reads the user's ``fe`` over and over in a thread until stopped: a write from the older
    epoch landing even for a moment shows as a lower value."""

    def __init__(self, redis: Any, user_id: str) -> None:
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(redis, user_id), daemon=True)
        self._thread.start()

    def _run(self, redis: Any, user_id: str) -> None:
        while not self._stop.wait(0.005):
            value = fencing_epoch(redis, user_id)
            if value is not None:
                self.values.append(value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_consumption_resumes_after_redis_restarts_empty(
    world: World, own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster = failover_cluster(own_cluster)
    accounts = world.accounts
    redis = redis_client(cluster)
    users = [a.username for a in accounts]
    tokens = await login_all(sessions, cluster, users)
    await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    urls = [node.url for node in cluster.nodes]
    clients = [LiveTab(http, urls, home=i, token=tokens[users[i]]) for i in range(len(urls))]
    try:
        for client in clients:
            await client.wait_connected()
        async with order_flow(cluster, accounts):
            await asyncio.to_thread(cluster.redis.stop)
            await asyncio.to_thread(cluster.redis.start)  # the same port, no data
            assert holders(redis, users) == dict.fromkeys(users)
            held = await wait_one_consumer_each(
                cluster, redis, accounts, TAKEOVER_BOUND_S + STARTED_WITHIN_S
            )
            await wait_stats_agree(await sessions.admin(cluster[0].url), cluster, held, 10)
        truth = await settled_truth(cluster, accounts)
        for index, client in enumerate(clients):
            user = users[index]
            await client.wait_converged(
                lambda t, q=truth[user]: t.qty() == q,
                f"{user}'s live tab showing the broker's {truth[user]}",
                CONVERGED_WITHIN_S,
            )
    finally:
        for client in clients:
            await client.stop()
    await check_browsers_equal_broker(http, cluster, accounts, tokens)
    await check_overlaps(cluster, accounts)


# A graceful stop gives the leases back at once: the next holder must not wait out the TTL.
GRACEFUL_TTL_S = 12.0
GRACEFUL_RENEW_S = 2.0


async def test_a_rolling_restart_hands_every_account_over_at_once(
    world: World, own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster = failover_cluster(
        own_cluster, lease_ttl_s=GRACEFUL_TTL_S, lease_renew_s=GRACEFUL_RENEW_S
    )
    accounts = world.accounts
    redis = redis_client(cluster)
    tokens = await login_all(sessions, cluster, TRADERS)
    handovers: list[float] = []
    async with order_flow(cluster, accounts):
        for node in list(cluster.nodes):
            held = await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
            leaving = [a for a in accounts if held[a.username].node == node.id]
            assert leaving, f"{node.id} holds no account: {held}"
            stopped_at = wall()
            assert await asyncio.to_thread(node.terminate) == 0, node.log()
            for account in leaving:
                _, stream = await wait_taken_over(
                    cluster, redis, account, dead=node.id, since=stopped_at,
                    timeout_s=GRACEFUL_TTL_S / 2,
                )  # fmt: skip
                assert stream.authenticated_at is not None
                handovers.append(stream.authenticated_at - stopped_at)
            node.restart()
            await asyncio.to_thread(node.wait_ready)
    print(f"\ngraceful handovers (s): {[round(s, 3) for s in handovers]}")
    assert max(handovers) < GRACEFUL_TTL_S / 2, handovers
    await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    await check_browsers_equal_broker(http, cluster, accounts, tokens)
    await check_overlaps(cluster, accounts)
    for node in cluster.nodes:
        assert node.tracebacks() == 0, node.log()


# REST kept failing this long after the new holder opened its stream: several of its tries,
# the hung ones cut at BROKER_REST_TIMEOUT_S.
OUTAGE_S = 4.0
REST_TIMEOUT_S = 1.0


async def test_a_takeover_during_a_rest_outage_waits_and_publishes_no_partial_state(
    world: World, own_cluster: ClusterFactory, http: aiohttp.ClientSession, sessions: Sessions
) -> None:
    cluster = failover_cluster(own_cluster, broker_rest_timeout_s=REST_TIMEOUT_S)
    accounts = world.accounts
    alice = accounts[0]
    redis = redis_client(cluster)
    sim = cluster.simulator.control
    tokens = await login_all(sessions, cluster, [alice.username])
    held = await wait_one_consumer_each(cluster, redis, accounts, STARTED_WITHIN_S)
    victim = node_by_id(cluster, held[alice.username].node)
    watchers = [
        await Tab.open(http, node.url, tokens[alice.username])
        for node in cluster.alive
        if node is not victim
    ]
    try:
        async with order_flow(cluster, [alice]):
            for tab in watchers:
                await tab.wait(lambda t: len(t.qty()) >= 2, "alice holding two symbols")
            key = alice.api_key
            await asyncio.to_thread(sim.fail_rest, 500, api_key=key, path="/v2/positions")
            await asyncio.to_thread(sim.hang_rest, api_key=key, path="/v2/orders")
            await asyncio.to_thread(sim.fail_rest, 500, api_key=key, path="/v2/account")
            died_at = wall()
            victim.kill()
            await wait_taken_over(
                cluster, redis, alice, dead=victim.id, since=died_at, timeout_s=TAKEOVER_BOUND_S
            )
            # Whatever the killed node published has arrived by now: that is the state shown
            # until the new holder has reconciled, however long REST stays down.
            previous = [tab.qty() for tab in watchers]
            assert all(previous), previous
            shown: list[list[Any]] = []
            loop = asyncio.get_running_loop()
            until = loop.time() + OUTAGE_S
            while loop.time() < until:
                shown.append([tab.qty() for tab in watchers])
                await asyncio.sleep(0.02)
            assert all(tab.is_open for tab in watchers)
            changed = [sample for sample in shown if sample != previous]
            assert not changed, f"shown {changed[0]} before REST returned, not {previous}"
            await asyncio.to_thread(sim.clear_rest_faults)
        truth = await settled_truth(cluster, [alice])
        for tab in watchers:
            await tab.wait(
                lambda t: t.qty() == truth[alice.username],
                f"{tab.node_url} showing the broker's {truth[alice.username]} after REST returned",
                CONVERGED_WITHIN_S,
            )
    finally:
        await asyncio.to_thread(sim.clear_rest_faults)
        for tab in watchers:
            await tab.close()
    await check_browsers_equal_broker(http, cluster, [alice], tokens)
