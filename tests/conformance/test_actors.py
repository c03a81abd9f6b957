"""Actors: state, ordering, handles, names, lifetimes, async and threaded actors, failures."""
import asyncio
import os
import time

import pytest


def _counter(ray, **options):
    @ray.remote(**options)
    class Counter:
        def __init__(self, start=0):
            self.value = start

        def incr(self, by=1):
            self.value += by
            return self.value

        def get(self):
            return self.value

        def pid(self):
            return os.getpid()

        def crash(self):
            os._exit(1)

        def reconstructed(self):
            return ray.get_runtime_context().was_current_actor_reconstructed

    return Counter


def test_actor_state_and_order(ray_start):
    """ORD1 (FIFO1, W-7 on grpc): one caller's calls to an actor run in submission order."""
    ray = ray_start
    counter = _counter(ray).remote(10)
    refs = [counter.incr.remote() for _ in range(20)]
    assert ray.get(refs) == list(range(11, 31))


def test_direct_method_call_returns_result(ray_start):
    """seed 004: handle.method(*args) runs remotely and returns the value."""
    ray = ray_start
    counter = _counter(ray).remote()
    assert counter.incr(5) == 5 and counter.get() == 5


def test_handles_passed_to_tasks_and_actors(ray_start):
    ray = ray_start
    counter = _counter(ray).remote()

    @ray.remote
    def bump(handle, n):
        return ray.get([handle.incr.remote() for _ in range(n)])[-1]

    assert ray.get([bump.remote(counter, 5) for _ in range(3)])
    assert ray.get(counter.get.remote()) == 15


def test_method_num_returns(ray_start):
    ray = ray_start

    @ray.remote
    class Pair:
        @ray.method(num_returns=2)
        def two(self):
            return "a", "b"

    a, b = Pair.remote().two.remote()
    assert ray.get([a, b]) == ["a", "b"]


def test_named_actor_get_actor_and_duplicates(ray_start):
    """CP1: a live name is taken once per namespace; get_actor and get_if_exists find its actor."""
    ray = ray_start
    Counter = _counter(ray)
    keep = Counter.options(name="ctr").remote()
    keep.incr.remote(3)
    assert ray.get(ray.get_actor("ctr").get.remote()) == 3
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="ctr").remote()
    same = Counter.options(name="ctr", get_if_exists=True).remote()
    assert ray.get(same.get.remote()) == 3
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor("nobody")
    other_ns = Counter.options(name="ctr", namespace="elsewhere").remote()
    assert ray.get(other_ns.get.remote()) == 0


def test_actor_constructor_error_kills_actor(ray_start):
    """RETRY1: a constructor exception kills the actor without restart."""
    ray = ray_start

    @ray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("no")

        def ping(self):
            return 1

    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(Broken.remote().ping.remote())


def test_kill_actor(ray_start):
    ray = ray_start
    counter = _counter(ray).remote()
    assert ray.get(counter.incr.remote()) == 1
    ray.kill(counter)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(counter.incr.remote())


def test_actor_restart_and_task_retry(ray_start):
    """RETRY1: a crashed actor restarts (fresh state, new process) within max_restarts."""
    ray = ray_start
    counter = _counter(ray, max_restarts=2, max_task_retries=0).remote()
    first = ray.get(counter.pid.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(counter.crash.remote())
    assert ray.get(counter.pid.remote()) != first
    assert ray.get(counter.reconstructed.remote()) is True
    assert ray.get(counter.get.remote()) == 0


def test_actor_dead_after_restarts_exhausted(ray_start):
    """RETRY1: with no restarts left the actor is dead and later calls fail ActorDiedError."""
    ray = ray_start
    counter = _counter(ray, max_restarts=0).remote()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(counter.crash.remote())
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(counter.get.remote())


def test_async_actor_runs_calls_concurrently(ray_start):
    ray = ray_start

    @ray.remote
    class Sleeper:
        async def nap(self, i):
            await asyncio.sleep(1.0)
            return i

    sleeper = Sleeper.remote()
    ray.get(sleeper.nap.remote(-1))
    start = time.monotonic()
    assert ray.get([sleeper.nap.remote(i) for i in range(20)]) == list(range(20))
    assert time.monotonic() - start < 5.0


def test_async_actor_awaits_object_refs(ray_start):
    ray = ray_start

    @ray.remote
    def value():
        return 21

    @ray.remote
    class Doubler:
        async def double(self, refs):
            return 2 * await refs[0]

    assert ray.get(Doubler.remote().double.remote([value.remote()])) == 42


def test_threaded_actor_max_concurrency(ray_start):
    ray = ray_start

    @ray.remote(max_concurrency=4)
    class Pool:
        def nap(self):
            time.sleep(1.0)
            return 1

    pool = Pool.remote()
    ray.get(pool.nap.remote())
    start = time.monotonic()
    assert sum(ray.get([pool.nap.remote() for _ in range(8)])) == 8
    assert time.monotonic() - start < 3.5


def test_actor_out_of_scope_terminates_after_pending_calls(ray_start):
    ray = ray_start

    @ray.remote
    class Recorder:
        def __init__(self, sink):
            self.sink = sink

        def record(self, i):
            ray.get(self.sink.incr.remote())
            return i

    sink = _counter(ray).remote()
    recorder = Recorder.remote(sink)
    refs = [recorder.record.remote(i) for i in range(5)]
    del recorder
    assert ray.get(refs) == list(range(5))
    assert ray.get(sink.get.remote()) == 5


def test_detached_actor_survives_handle(ray_start):
    ray = ray_start
    Counter = _counter(ray)
    handle = Counter.options(name="keeper", lifetime="detached").remote()
    handle.incr.remote(2)
    del handle
    assert ray.get(ray.get_actor("keeper").get.remote()) == 2


def test_actor_assigned_resources(ray_start):
    ray = ray_start

    @ray.remote(num_cpus=2, num_gpus=0.5)
    class Holder:
        def held(self):
            return ray.get_runtime_context().get_assigned_resources()

    held = ray.get(Holder.remote().held.remote())
    assert held["CPU"] == 2.0 and held["GPU"] == 0.5


def test_actor_whose_constructor_argument_failed_is_dead(ray_start):
    ray = ray_start

    @ray.remote
    def broken():
        raise ValueError("no value")

    @ray.remote
    class Uses:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    uses = Uses.remote(broken.remote())
    with pytest.raises(ray.exceptions.ActorDiedError, match="constructor"):
        ray.get(uses.get.remote(), timeout=30)
