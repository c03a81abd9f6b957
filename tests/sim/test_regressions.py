"""Regressions: each test reproduced a bug before its fix (named in the docstring)."""
import os
import time

import numpy as np
import pytest

import rayref

BIG = 300_000  # elements; a float64 array of this size is far above the 100 KiB inline threshold


@rayref.remote
class Box:
    """An actor keeping the refs its constructor got, and reading the first later."""

    def __init__(self, box):
        self.box = box

    def ready(self):
        return True

    def total(self):
        return float(rayref.get(self.box[0]).sum())


def test_actor_constructor_argument_stays_alive(make_cluster):
    """BOR1: refs an actor keeps from its constructor's arguments are registered as borrowed."""
    make_cluster()

    x = rayref.put(np.ones(BIG))
    box = Box.remote([x])
    assert rayref.get(box.ready.remote())
    del x
    time.sleep(1)
    assert rayref.get(box.total.remote()) == BIG


def test_restarted_actor_gets_its_stored_constructor_argument(make_cluster):
    """BOR1, RETRY1: A restartable actor's creation arguments stay pinned until it can no longer restart."""
    make_cluster()

    @rayref.remote(max_restarts=1)
    class Holder:
        def __init__(self, array):
            self.total = float(array.sum())

        def get(self):
            return self.total

        def die(self):
            os._exit(1)

    holder = Holder.remote(np.ones(BIG))
    assert rayref.get(holder.get.remote()) == BIG
    with pytest.raises(rayref.exceptions.RayActorError):
        rayref.get(holder.die.remote())
    assert rayref.get(holder.get.remote()) == BIG


def test_actor_calls_keep_order_when_an_early_call_has_a_large_argument(make_cluster):
    """ORD1: executions start in arrival order, not in the order their arguments arrive."""
    make_cluster(nodes=[{"num_cpus": 2}, {"num_cpus": 2, "resources": {"far": 1}}])

    @rayref.remote(resources={"far": 1})
    class Log:
        def __init__(self):
            self.seen = []

        def add(self, i, payload=None):
            self.seen.append(i)

        def get(self):
            return self.seen

    log = Log.remote()
    log.add.remote(0, np.ones(1_000_000))
    log.add.remote(1)
    log.add.remote(2)
    assert rayref.get(log.get.remote()) == [0, 1, 2]


def test_actor_queue_moves_on_after_a_call_fails_before_sending(make_cluster):
    """ORD1: A call failed by its dependency (or cancelled) while queued does not stall the calls behind it."""
    make_cluster()

    @rayref.remote
    def boom():
        raise KeyError("dep failed")

    @rayref.remote
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    rayref.get(echo.echo.remote(0))
    failed = echo.echo.remote(boom.remote())
    after = echo.echo.remote(7)
    assert rayref.get(after, timeout=10) == 7
    with pytest.raises(KeyError):
        rayref.get(failed)


def test_actor_methods_see_the_actors_gpus_and_environment(make_cluster):
    """P-CMD-5: an actor's methods run with the actor's GPU (CUDA_VISIBLE_DEVICES) and env vars."""
    make_cluster(nodes=[{"num_cpus": 2, "num_gpus": 2}])

    @rayref.remote(num_gpus=1, runtime_env={"env_vars": {"WHO": "actor"}})
    class Gpu:
        def where(self):
            return rayref.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("WHO")

    ids, visible, who = rayref.get(Gpu.remote().where.remote())
    assert len(ids) == 1 and visible == str(ids[0]) and who == "actor"


def test_cancelled_blocked_task_returns_its_cpu(make_cluster):
    """A task interrupted while blocked in get stops being counted as blocked (NM1)."""
    cluster = make_cluster(nodes=[{"num_cpus": 2}])

    @rayref.remote
    def forever():
        time.sleep(10**6)

    @rayref.remote
    def parent():
        return rayref.get(forever.remote())

    ref = parent.remote()
    rayref.wait([ref], timeout=1)
    rayref.cancel(ref, recursive=False)
    with pytest.raises(rayref.exceptions.TaskCancelledError):
        rayref.get(ref)
    time.sleep(0.1)
    assert [proc.cw.blocked for proc in cluster.runtime.processes.values()] == [0] * len(cluster.runtime.processes)

    @rayref.remote
    def quick():
        return 1

    @rayref.remote
    def nested():
        return rayref.get(quick.remote()) + 1

    start = cluster.now
    assert rayref.get(nested.remote()) == 2
    assert cluster.now - start < 1


def test_kill_with_restart_during_creation_creates_one_actor(make_cluster):
    """RETRY1, P-ACT-1: Restarting an actor whose creation lease is still pending asks for one lease, not
    two."""
    cluster = make_cluster(nodes=[{"num_cpus": 2}])

    @rayref.remote(max_restarts=2)
    class A:
        def ping(self):
            return "pong"

    a = A.remote()
    rayref.kill(a, no_restart=False)
    assert rayref.get(a.ping.remote()) == "pong"
    time.sleep(1)
    nm = cluster.runtime.node_managers[cluster.nodes[0].node_id]
    leased = [w for w in nm.workers.values() if w.state.value == "leased"]
    assert len(leased) == 1


def test_borrowed_ref_kept_only_inside_a_put_is_reported():
    """BOR1: a borrowed ref a worker holds only inside an object it put is reported in its reply."""
    from rayref.core import protocol as p
    from rayref.core.config import EngineConfig
    from rayref.core.core_worker import CoreWorker

    cw = CoreWorker("w1", "node-1", EngineConfig())
    borrowed = p.RefInfo(object_id="driver.p1", owner="driver")
    cw.add_local_ref(borrowed, register=False)
    cw.release_dropped()
    cw.put(p.Blob(data=b"x", nbytes=1, contained=(borrowed,)))
    cw.refs.remove_local(borrowed.object_id)
    assert cw.refs.unregistered_borrows() == [borrowed]


def test_messages_between_two_processes_arrive_in_send_order(make_cluster):
    """FIFO1: a small message sent after a large one does not overtake it (ORD1 relies on it)."""
    make_cluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1, "resources": {"far": 1}}])

    @rayref.remote(resources={"far": 1})
    class Log:
        def __init__(self):
            self.seen = []

        def add(self, i, payload):
            self.seen.append(i)

        def get(self):
            return self.seen

    log = Log.remote()
    rayref.get(log.get.remote())
    for i in range(20):
        log.add.remote(i, b"x" * (90_000 if i % 2 == 0 else 1))
    assert rayref.get(log.get.remote()) == list(range(20))


def test_finished_user_threads_are_not_kept_alive(make_cluster):
    """LIFE2: A thread started while another finished must not take it as its parent (a growing chain)."""
    import gc

    from transports.sim.process import SimGreenlet

    make_cluster()

    @rayref.remote
    class A:
        def v(self):
            return 1

    a = A.remote()
    assert sum(rayref.get([a.v.remote() for _ in range(2000)])) == 2000
    gc.collect()
    assert sum(isinstance(o, SimGreenlet) for o in gc.get_objects()) < 100


def test_cancelling_a_queued_call_waiting_for_its_argument_lets_the_rest_run(make_cluster):
    """ORD1/QUI1, P-TASK-3: cancelling the head of an actor's execution queue starts the calls behind it."""
    make_cluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1, "resources": {"far": 1}}])

    @rayref.remote(resources={"far": 1})
    class Echo:
        def echo(self, x, payload=None):
            return x

    echo = Echo.remote()
    rayref.get(echo.echo.remote(0))
    slow = echo.echo.remote(1, np.ones(5_000_000))
    behind = echo.echo.remote(2)
    rayref.cancel(slow)
    assert rayref.get(behind, timeout=30) == 2


def test_constructor_borrow_is_registered_by_the_owner_even_over_a_slow_link():
    """BOR1, FIFO1, P-TASK-2: refs a constructor keeps are registered through the actor's owner, so a slow path
    between the control plane and the object's owner cannot let the object be freed early."""
    from sim import Cluster, NetworkModel, SimConfig

    network = NetworkModel()
    cluster = Cluster(seed=0, network=network, sim=SimConfig(validate=True))
    for spec in ({"num_cpus": 2}, {"num_cpus": 2, "resources": {"maker": 1}},
                 {"num_cpus": 2, "resources": {"creator": 1}}):
        cluster.add_node(memory=10**9, object_store_memory=10**9, **spec)
    network.slow_link("node-0001", "node-0002", latency=2.0, bandwidth=1e9)
    cluster.connect()
    try:
        @rayref.remote(resources={"maker": 1})
        class Maker:
            def make(self):
                return [rayref.put(np.ones(BIG))]

        @rayref.remote(resources={"creator": 0.5})
        def create(maker):
            (inner,) = rayref.get(maker.make.remote())
            box = Box.options(resources={"creator": 0.1}).remote([inner])
            rayref.get(box.ready.remote())
            return [box]

        [box] = rayref.get(create.remote(Maker.remote()))
        time.sleep(10)
        assert rayref.get(box.total.remote()) == BIG
    finally:
        rayref.shutdown()


def test_async_actor_methods_see_the_actors_environment(make_cluster):
    """P-CMD-5: an async actor's coroutine methods (on its event-loop thread) see its env vars and GPU."""
    make_cluster(nodes=[{"num_cpus": 2, "num_gpus": 1}])

    @rayref.remote(num_gpus=1, runtime_env={"env_vars": {"WHO": "async-actor"}})
    class Where:
        async def env(self):
            return os.environ.get("WHO"), os.environ.get("CUDA_VISIBLE_DEVICES")

    assert rayref.get(Where.remote().env.remote()) == ("async-actor", "0")

