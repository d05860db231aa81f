"""The cluster's Lua scripts: loaded once per Redis, run by SHA, reloaded when Redis forgot them.

redis-py's own ``Script`` asks ``SCRIPT EXISTS`` before every pipeline; these run ``EVALSHA``
directly, and only on ``NOSCRIPT`` (a restarted or flushed Redis) load the text and run again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Arg = str | int | float | bytes


class LuaScript:
    """One script of ``app/cluster/lua``, identified by its SHA1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("app.cluster").joinpath("lua", f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.source)

    async def run(self, redis: Redis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    async def run_many(
        self, redis: Redis, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]
    ) -> list[Any]:
        """Run the script once per call in one round trip (a pipeline, not a transaction).

        Results come back in call order; a failed call's result is its exception. When Redis
        lost the script mid-way, every call from the first ``NOSCRIPT`` on failed (the calls
        run in order), so exactly that suffix is run again after loading.
        """
        results: list[Any] = []
        pending = list(calls)
        for _ in range(2):
            async with redis.pipeline(transaction=False) as pipe:
                for keys, args in pending:
                    pipe.evalsha(self.sha, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
            first_missing = next(
                (i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)),
                None,
            )
            if first_missing is None:
                return results + list(answers)
            results.extend(answers[:first_missing])
            pending = pending[first_missing:]
            await self.load(redis)
        raise NoScriptError(f"script {self.name} was not kept by Redis")


@cache
def script(name: str) -> LuaScript:
    """The process-wide instance of a script (the text and SHA never change at run time)."""
    return LuaScript(name)


ALL_SCRIPTS = (
    "apply_events",
    "replace_state",
    "read_state",
    "admit",
    "refresh",
    "release",
    "census",
    "counter_add",
    "counter_reserve",
    "counter_hold",
    "counter_settle",
    "node_report",
    "node_rows",
    "lease_acquire",
    "lease_renew",
    "lease_release",
    "lease_presence",
    "price_want_write",
    "price_want_read",
)


async def load_all(redis: Redis) -> None:
    """Load every script up front, so the first event or admission pays no extra round trip."""
    for name in ALL_SCRIPTS:
        await script(name).load(redis)
