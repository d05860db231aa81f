"""Scale-out on Redis (REDIS_URL set): what several nodes share.

- ``state``: users' latest-value portfolio state, written with its change notice atomically
  and fenced by account epoch; read whole, with its epoch and offset, for snapshots.
- ``subscriber`` (with ``link``, ``subscriptions``, ``gate``, ``probe``): the node's one
  pub/sub connection, turning notices into events in order and asking for resyncs.
- ``admission``: cluster-wide connection limits over expiring slots.
- ``counters``: expiring shared counters (login throttling).
- ``registry``: the live nodes' figures for the cluster stats.
- ``node``: all of the above built from Settings as one resource.
Names of keys and channels: ``keys``; the Lua scripts: ``lua/`` and ``scripts``.
"""
