"""The request watchdog: a deadline that comes due shuts its sockets, in time order."""

from __future__ import annotations

import socket
import time

from tap_openfunnel.deadlines import Deadline, _Watchdog


def _shut_within(sock: socket.socket, seconds: float) -> bool:
    """Whether ``sock`` reads end-of-file (it was shut down) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return False
    assert data == b""
    return True


def test_an_earlier_deadline_added_later_still_expires_on_time():
    # The watchdog sleeps until the earliest deadline; it is only woken when a new one
    # comes before that, so this one must wake it.
    watchdog = _Watchdog()
    late, early = Deadline(30), Deadline(0.2)
    late_pair, early_pair = socket.socketpair(), socket.socketpair()
    try:
        late.watch(late_pair[0])
        watchdog.add(late)
        time.sleep(0.05)  # the watchdog is asleep until `late` is due
        early.watch(early_pair[0])
        watchdog.add(early)
        # Shut long before `late` is due (30 s): the watchdog woke up for `early`.
        assert _shut_within(early_pair[0], 5)
        assert early.expired
        assert not late.expired
        assert not _shut_within(late_pair[0], 0.1)
    finally:
        late.finish()
        for sock in (*late_pair, *early_pair):
            sock.close()


def test_later_deadlines_expire_in_order_and_finished_ones_never():
    watchdog = _Watchdog()
    first, done, second = Deadline(0.1), Deadline(0.15), Deadline(0.3)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for limit, pair in zip((first, done, second), pairs, strict=True):
            limit.watch(pair[0])
            watchdog.add(limit)
        done.finish()  # the request ended in time: its socket goes back to the pool
        assert _shut_within(pairs[0][0], 5)
        assert _shut_within(pairs[2][0], 5)
        assert first.expired
        assert second.expired
        assert not done.expired
        assert not _shut_within(pairs[1][0], 0.1)
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
