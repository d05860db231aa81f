"""Key and channel names: parsed back, and documented in docs/scaling.md as built."""

from __future__ import annotations

from pathlib import Path

from app.cluster import keys

SCALING_DOC = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text()


def test_a_user_channel_names_its_user_and_no_other_channel_does() -> None:
    for user in ("user-1", "a}b", "with space"):
        assert keys.user_of_channel(keys.user_channel(user)) == user
    assert keys.user_of_channel(keys.probe_channel("node-a")) is None
    assert keys.user_of_channel("pf.u.user-1") is None


def test_a_users_keys_share_one_hash_tag() -> None:
    names = keys.UserKeys.of("user-7")
    assert all("{user-7}" in name for name in [*names.state_keys, names.channel])


def test_scaling_doc_lists_every_name_as_built() -> None:
    user, node = "<userId>", "<nodeId>"
    built = [
        *keys.UserKeys.of(user).state_keys,
        keys.user_channel(user),
        keys.probe_channel(node),
        keys.CONN_ALL,
        keys.conn_user_key(user),
        keys.conn_node_key(node),
        keys.NODES_INDEX,
        keys.NODES_ROWS,
        keys.NODES_SEEN,
        keys.counter_key("<namespace>", "<key>"),
        keys.held_key("<namespace>", "<key>"),
        keys.lease_key("<name>"),
        keys.lease_grants_key("<name>"),
        keys.LEASE_NODES,
    ]
    missing = [name for name in built if f"`{name}`" not in SCALING_DOC]
    assert missing == []


def test_a_leases_keys_share_its_name_as_hash_tag() -> None:
    name = "account:alice"
    assert all("{account:alice}" in k for k in (keys.lease_key(name), keys.lease_grants_key(name)))
