"""Objects, get, wait and cancellation. Runs unchanged on every transport."""
import time

import pytest


def test_put_get_roundtrip(ray_start):
    ray = ray_start
    values = [1, "two", {"three": [3]}, None, (4.0,)]
    assert ray.get([ray.put(v) for v in values]) == values


def test_get_single_and_list(ray_start):
    ray = ray_start
    ref = ray.put(7)
    assert ray.get(ref) == 7 and ray.get([ref, ref]) == [7, 7]


def test_put_of_refs_keeps_inner_alive(ray_start):
    """BOR1: a ref kept only inside a put object stays retrievable."""
    ray = ray_start
    inner = ray.put("inner")
    outer = ray.put([inner])
    del inner
    (got,) = ray.get(outer)
    assert ray.get(got) == "inner"


def test_get_timeout(ray_start):
    ray = ray_start

    @ray.remote
    def slow():
        time.sleep(30)
        return 1

    ref = slow.remote()
    with pytest.raises(ray.exceptions.GetTimeoutError) as info:
        ray.get(ref, timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert ray.get(ref) == 1


def test_wait_keeps_input_order(ray_start):
    ray = ray_start

    @ray.remote
    def sleeper(t):
        time.sleep(t)
        return t

    refs = [sleeper.remote(t) for t in (0.3, 0.1, 0.2, 5.0)]
    ready, rest = ray.wait(refs, num_returns=3, timeout=3)
    assert ready == refs[:3] and rest == refs[3:]


def test_wait_timeout_returns_partial(ray_start):
    ray = ray_start

    @ray.remote
    def sleeper(t):
        time.sleep(t)
        return t

    refs = [sleeper.remote(0.0), sleeper.remote(10.0)]
    ready, rest = ray.wait(refs, num_returns=2, timeout=1.0)
    assert ready == refs[:1] and rest == refs[1:]
    ready, rest = ray.wait(refs, num_returns=1, timeout=0)
    assert ready == refs[:1]


def test_wait_pipeline_processes_all(ray_start):
    ray = ray_start

    @ray.remote
    def work(i):
        time.sleep(0.01 * (i % 5))
        return i

    pending = [work.remote(i) for i in range(20)]
    seen = []
    while pending:
        ready, pending = ray.wait(pending)
        seen.extend(ray.get(ready))
    assert sorted(seen) == list(range(20))


def test_cancel_queued_and_running(ray_start):
    ray = ray_start

    @ray.remote
    def forever():
        time.sleep(10**6)

    running = [forever.remote() for _ in range(4)]
    queued = forever.remote()
    ray.cancel(queued)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(queued)
    for ref in running:
        ray.cancel(ref, force=True)
    for ref in running:
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(ref)


def test_cancel_interrupts_blocked_task_and_children(ray_start):
    ray = ray_start

    @ray.remote
    def child():
        time.sleep(10**6)

    @ray.remote
    def parent():
        return ray.get(child.remote())

    ref = parent.remote()
    ray.wait([ref], timeout=1)
    ray.cancel(ref, recursive=True)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref)


def test_cancel_finished_task_keeps_result(ray_start):
    ray = ray_start

    @ray.remote
    def quick():
        return 5

    ref = quick.remote()
    assert ray.get(ref) == 5
    ray.cancel(ref)
    assert ray.get(ref) == 5


def test_cancel_a_running_async_actor_call(ray_start):
    """Ray cancels a running coroutine method by cancelling its asyncio task: the call fails
    TaskCancelledError, the coroutine sees CancelledError, and the actor goes on serving."""
    ray = ray_start

    @ray.remote
    class Sleeper:
        def __init__(self):
            self.cancelled = 0

        async def nap(self):
            import asyncio
            try:
                await asyncio.sleep(10**6)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

        async def count(self):
            return self.cancelled

    sleeper = Sleeper.remote()
    assert ray.get(sleeper.count.remote()) == 0
    napping = sleeper.nap.remote()
    ray.wait([napping], timeout=0.5)
    ray.cancel(napping)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(napping, timeout=30)
    assert ray.get(sleeper.count.remote()) == 1
