"""The process host's small pieces that every call goes through."""
import threading
import time

import pytest

from transports.grpc.host import Signal

pytestmark = pytest.mark.timeout(30)


def test_a_signal_is_a_one_shot_event():
    signal = Signal()
    assert not signal.wait(0.01), "not set yet: the wait times out"
    signal.set()
    signal.set()  # a second set is harmless
    assert signal.wait(0.01) and signal.wait(0.01), "set stays set"


def test_a_signal_wakes_a_thread_blocked_on_it():
    signal, woke = Signal(), []
    waiter = threading.Thread(target=lambda: woke.append(signal.wait(10)))
    waiter.start()
    time.sleep(0.05)
    assert not woke, "the waiter is blocked"
    signal.set()
    waiter.join(5)
    assert woke == [True]
