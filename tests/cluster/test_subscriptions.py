"""The subscription book: reference counts, the unsubscribe grace period, batching, and
matching confirmations to commands (times are passed in: no clock runs here)."""

from __future__ import annotations

from app.cluster.subscriptions import SubscriptionBook


def test_the_first_acquire_queues_one_subscribe_and_later_ones_nothing() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    book.acquire("a")
    book.acquire("a")
    book.acquire("b")

    assert book.take_commands() == (["a", "b"], [])
    assert book.take_commands() == ([], [])
    assert book.refs("a") == 2


def test_a_confirmed_subscribe_makes_the_user_live() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    book.acquire("a")
    book.take_commands()
    assert not book.is_live("a")

    assert book.confirmed("a", subscribed=True)
    assert book.is_live("a") and book.live_count == 1


def test_the_last_release_unsubscribes_only_after_the_grace_period() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    book.acquire("a")
    book.take_commands()
    book.confirmed("a", True)
    book.release("a", now=100.0)

    assert book.next_deadline() == 105.0
    assert book.due(104.9) == []
    assert book.take_commands() == ([], [])
    assert book.due(105.0) == ["a"]
    assert book.take_commands() == ([], ["a"])
    assert not book.is_wanted("a") and not book.is_live("a")


def test_an_acquire_within_the_grace_period_sends_nothing() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    book.acquire("a")
    book.take_commands()
    book.confirmed("a", True)
    book.release("a", now=100.0)
    book.acquire("a")

    assert book.due(200.0) == [] and book.take_commands() == ([], [])
    assert book.is_live("a")


def test_an_acquire_after_the_unsubscribe_was_queued_but_not_sent_cancels_it() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=0)
    book.acquire("a")
    book.take_commands()
    book.confirmed("a", True)
    book.release("a", now=1.0)
    book.due(1.0)
    book.acquire("a")

    assert book.take_commands() == ([], [])
    assert book.is_live("a")


def test_a_subscribe_confirmation_with_an_unsubscribe_behind_it_is_not_live() -> None:
    """subscribe, unsubscribe, subscribe all in flight: only the last confirmation counts
    (redis-py issue #764)."""
    book = SubscriptionBook(unsubscribe_delay_s=0)
    book.acquire("a")
    book.take_commands()
    book.release("a", now=1.0)
    book.due(1.0)
    assert book.take_commands() == ([], ["a"])
    book.acquire("a")
    assert book.take_commands() == (["a"], [])

    assert not book.confirmed("a", True)
    assert not book.confirmed("a", False)
    assert book.confirmed("a", True) and book.is_live("a")


def test_a_confirmation_nobody_asked_for_changes_nothing() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    assert not book.confirmed("a", True)
    assert not book.is_live("a")


def test_a_new_connection_queues_every_wanted_user_and_flags_the_live_ones() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    for user in ("live", "pending", "leaving"):
        book.acquire(user)
    book.take_commands()
    book.confirmed("live", True)
    book.confirmed("leaving", True)
    book.release("leaving", now=1.0)

    dropped = book.connection_reset()

    assert dropped == ["leaving"]
    subscribe, unsubscribe = book.take_commands()
    assert sorted(subscribe) == ["live", "pending"] and unsubscribe == []
    assert book.live_count == 0
    assert book.take_resync_flag("live") and not book.take_resync_flag("live")
    assert not book.take_resync_flag("pending")


def test_release_of_an_unknown_user_is_ignored() -> None:
    book = SubscriptionBook(unsubscribe_delay_s=5)
    book.release("nobody", now=1.0)
    assert book.next_deadline() is None and book.wanted_count == 0
