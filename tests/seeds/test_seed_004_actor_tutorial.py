"""Seed 004: actor tutorial ("Ray Actors are essentially stateful, remote Python classes").

The example initializes Ray itself (``if ray.is_initialized(): ray.shutdown()`` then
``ray.init(ignore_reinit_error=True)``), so these tests do too, pinned to 4 CPUs and seed 0.
The "key levers" the text lists are each checked as well.
"""
from __future__ import annotations

import os
import time

import pytest

import rayref as ray
from rayref.object_ref import ObjectRef


def _counter_class():
    @ray.remote
    class Counter:
        def __init__(self):
            self.count = 0

        def increment(self):
            self.count += 1
            return self.count

        def get_count(self):
            return self.count

    return Counter


def _run_example(capsys):
    # Initialize Ray if it's not already initialized.
    # In a real cluster, you'd connect to the Ray cluster.
    if ray.is_initialized():
        ray.shutdown()
    ray.init(ignore_reinit_error=True, num_cpus=4, seed=0)
    assert ray.is_initialized()

    Counter = _counter_class()

    # Create an actor instance. This deploys the Counter class
    # to a Ray worker and returns a handle (proxy object).
    counter_actor_handle = Counter.remote()
    assert isinstance(counter_actor_handle, ray.ActorHandle)

    # Call methods on the actor. These calls are asynchronous.
    # The result is an ObjectRef, which is a future.
    future_count1 = counter_actor_handle.increment.remote()
    future_count2 = counter_actor_handle.increment.remote()
    future_count3 = counter_actor_handle.increment.remote()
    assert all(isinstance(f, ObjectRef) for f in (future_count1, future_count2, future_count3))

    # Get the current count.
    future_current_count = counter_actor_handle.get_count.remote()

    # Retrieve the actual results.
    results = ray.get([future_count1, future_count2, future_count3, future_current_count])

    print(f"Results from increment calls: {results[:3]}")
    print(f"Current count: {results[3]}")

    assert results == [1, 2, 3, 3]
    assert capsys.readouterr().out == "Results from increment calls: [1, 2, 3]\nCurrent count: 3\n"


def test_counter_example_fresh_start(capsys):
    assert not ray.is_initialized()
    _run_example(capsys)


def test_counter_example_when_already_initialized(ray_sim, capsys):
    """The ``if ray.is_initialized(): ray.shutdown()`` branch: a connected driver is replaced."""
    assert ray.is_initialized()
    _run_example(capsys)
    assert ray.cluster_resources()["CPU"] == 4.0  # the example's own cluster, not the fixture's


def test_counter_example_literal_init(capsys):
    """``ray.init(ignore_reinit_error=True)`` exactly as written (host-sized local cluster), and
    a second init that the flag makes harmless."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(ignore_reinit_error=True)
    ray.init(ignore_reinit_error=True)  # already connected: ignored, no error
    Counter = _counter_class()
    handle = Counter.remote()
    refs = [handle.increment.remote() for _ in range(3)] + [handle.get_count.remote()]
    assert ray.get(refs) == [1, 2, 3, 3]


def test_reinit_without_flag_is_an_error(ray_sim):
    with pytest.raises(RuntimeError):
        ray.init()


def test_actor_creation_with_init_arguments(ray_sim):
    """``YourClass.remote(arg1, arg2)`` passes the arguments to ``__init__``."""
    @ray.remote
    class Account:
        def __init__(self, owner, balance):
            self.owner, self.balance = owner, balance

        def describe(self):
            return self.owner, self.balance

    handle = Account.remote("alice", 10)
    assert ray.get(handle.describe.remote()) == ("alice", 10)
    handle = Account.remote(owner="bob", balance=20)
    assert ray.get(handle.describe.remote()) == ("bob", 20)


def test_method_invocation_remote_with_args_and_direct_call(ray_sim):
    """``actor_handle.method.remote(*args, **kwargs)`` sends a message; the text also says a method
    can be called synchronously as ``actor_handle.method(*args, **kwargs)``, "which internally uses
    ray.get()" (rayref implements that; Ray itself raises TypeError for a direct call)."""
    @ray.remote
    class Calc:
        def __init__(self):
            self.calls = 0

        def add(self, a, b=0):
            self.calls += 1
            return a + b

        def get_calls(self):
            return self.calls

    calc = Calc.remote()
    ref = calc.add.remote(1, b=2)
    assert isinstance(ref, ObjectRef)
    assert ray.get(ref) == 3
    assert calc.add(4, b=5) == 9
    assert calc.get_calls() == 2


def test_actor_placement_with_resources(make_cluster):
    """``YourClass.options(resources={"custom_resource": 1}).remote()`` places the actor on a node
    that has the resource; ``ray.remote(num_cpus=...)`` reserves CPUs for it."""
    cluster = make_cluster(nodes=({"num_cpus": 4}, {"num_cpus": 4, "resources": {"custom_resource": 1}}))

    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    handle = Where.options(resources={"custom_resource": 1}).remote()
    assert ray.get(handle.node.remote()) == cluster.nodes[1].node_id

    @ray.remote(num_cpus=2)
    class Heavy:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    heavy = [Heavy.remote() for _ in range(4)]
    placed = ray.get([h.node.remote() for h in heavy])
    assert sorted(placed) == sorted([n.node_id for n in cluster.nodes] * 2)  # 2 CPUs x 2 per node
    # available_resources() is the control plane's (eventually consistent) view: poll it.
    deadline = time.time() + 5
    while ray.available_resources().get("CPU", 0.0) != 0.0 and time.time() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0.0) == 0.0  # 4 actors x 2 CPUs fill 8 CPUs


def test_actor_supervision_max_restarts(ray_sim):
    """``ray.remote(max_restarts=...)``: a crashed actor is restarted (with fresh state); without
    restarts it stays dead."""
    @ray.remote(max_restarts=1)
    class Fragile:
        def __init__(self):
            self.count = 0

        def increment(self):
            self.count += 1
            return self.count

        def pid(self):
            return os.getpid()

        def crash(self):
            os._exit(1)

    actor = Fragile.remote()
    assert ray.get([actor.increment.remote(), actor.increment.remote()]) == [1, 2]
    first_pid = ray.get(actor.pid.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.crash.remote())
    # Restarted: state is rebuilt by __init__, in a new process.
    deadline = time.time() + 30
    while True:
        try:
            value = ray.get(actor.increment.remote())
            break
        except ray.exceptions.RayActorError:
            assert time.time() < deadline, "actor never came back"
            time.sleep(0.5)
    assert value == 1
    assert ray.get(actor.pid.remote()) != first_pid

    # The one allowed restart is used up: the next crash is final.
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.crash.remote())
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.increment.remote())


def test_calls_to_one_actor_run_sequentially_in_order(ray_sim):
    """ORD1: "Ray guarantees that method calls for a single actor are executed sequentially in the
    order they are received"."""
    @ray.remote
    class Log:
        def __init__(self):
            self.entries = []
            self.active = 0
            self.max_active = 0

        def append(self, i):
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            time.sleep(0.1)
            self.entries.append(i)
            self.active -= 1
            return len(self.entries)

        def state(self):
            return self.entries, self.max_active

    log = Log.remote()
    refs = [log.append.remote(i) for i in range(50)]
    assert ray.get(refs) == list(range(1, 51))
    entries, max_active = ray.get(log.state.remote())
    assert entries == list(range(50))
    assert max_active == 1


def test_multiple_actors_process_calls_concurrently(ray_sim):
    """"if you have multiple actors, their method calls are processed concurrently"."""
    @ray.remote
    class Worker:
        def work(self):
            time.sleep(2)
            return os.getpid()

    workers = [Worker.remote() for _ in range(3)]
    ray.get([w.work.remote() for w in workers])  # warm up
    start = time.time()
    pids = ray.get([w.work.remote() for w in workers])
    assert len(set(pids)) == 3  # each actor is its own process
    assert 2 <= time.time() - start < 2.5  # three 2 s calls in parallel, not 6 s


def test_remote_returns_objectref_immediately(ray_sim):
    """"actor_handle.method.remote() returns an ObjectRef immediately, even though the actual
    computation might take a significant amount of time"."""
    @ray.remote
    class Slow:
        def compute(self):
            time.sleep(60)
            return "done"

    slow = Slow.remote()
    start = time.time()
    ref = slow.compute.remote()
    assert isinstance(ref, ObjectRef)
    assert time.time() == start  # no virtual time passed in the driver
    ready, not_ready = ray.wait([ref], timeout=0)
    assert (ready, not_ready) == ([], [ref])
    assert ray.get(ref) == "done"
    assert 60 <= time.time() - start < 61
