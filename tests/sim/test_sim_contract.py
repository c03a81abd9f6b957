"""The simulator's contract: virtual time, determinism, identity, crashes, isolation between runs."""
import os
import random
import time

import numpy as np
import pytest

import rayref
from sim import Cluster, SimConfig

real_clock = time.perf_counter


def _program():
    @rayref.remote
    def draw(i):
        time.sleep(random.random())
        return i, random.random(), float(np.random.rand())

    @rayref.remote
    class Acc:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return len(self.items)

    acc = Acc.remote()
    values = rayref.get([draw.remote(i) for i in range(30)])
    rayref.get([acc.add.remote(v[1]) for v in values])
    return values


def _run(seed, nodes=3):
    cluster = Cluster(seed=seed, sim=SimConfig(validate=True))
    for _ in range(nodes):
        cluster.add_node(num_cpus=2, memory=10**9, object_store_memory=10**9)
    cluster.connect()
    try:
        return _program(), cluster.trace_digest(), cluster.now
    finally:
        rayref.shutdown()


def test_same_seed_same_digest_and_results():
    """DET1."""
    first, second = _run(7), _run(7)
    assert first == second
    assert first[1] != _run(8)[1]


def test_hundred_sleeping_tasks_take_virtual_time_only():
    rayref.init(num_cpus=100, seed=1, transport="sim")

    @rayref.remote
    def nap():
        time.sleep(100)
        return 1

    wall = real_clock()
    start = time.time()
    assert sum(rayref.get([nap.remote() for _ in range(100)])) == 100
    virtual = time.time() - start
    assert 100 <= virtual < 100.1
    assert real_clock() - wall < 5


def test_driver_sleep_advances_virtual_time():
    cluster = Cluster(seed=0)
    cluster.add_node(num_cpus=1)
    cluster.connect()
    before = cluster.now
    time.sleep(30)
    assert cluster.now == pytest.approx(before + 30)


def test_node_ids_match_runtime_context(make_cluster):
    cluster = make_cluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1, "resources": {"special": 1}}])

    @rayref.remote(resources={"special": 1})
    def where():
        return rayref.get_runtime_context().get_node_id()

    assert rayref.get(where.remote()) == cluster.nodes[1].node_id
    assert rayref.get_runtime_context().get_node_id() == cluster.nodes[0].node_id


def test_pids_are_simulated_and_os_exit_kills_only_the_worker(make_cluster):
    make_cluster()

    @rayref.remote(max_retries=0)
    def die():
        os._exit(3)

    @rayref.remote
    def pid():
        return os.getpid()

    assert rayref.get(pid.remote()) != os.getpid()
    with pytest.raises(rayref.exceptions.WorkerCrashedError, match="os._exit"):
        rayref.get(die.remote())
    assert rayref.get(pid.remote()) > 1000


def test_worker_crash_retried_up_to_max_retries(make_cluster):
    """RETRY1: a task whose worker process dies is re-run (here twice) within max_retries."""
    make_cluster()

    @rayref.remote
    class Count:
        def __init__(self):
            self.n = 0

        def bump(self):
            self.n += 1
            return self.n

    count = Count.remote()

    @rayref.remote(max_retries=3)
    def crash_twice(counter):
        if rayref.get(counter.bump.remote()) <= 2:
            os._exit(1)
        return "survived"

    assert rayref.get(crash_twice.remote(count)) == "survived"


def test_random_is_seeded_per_task_and_driver_state_untouched(make_cluster):
    make_cluster()

    @rayref.remote
    def draw():
        return random.random()

    random.seed(123)
    expected_next = random.Random(123).random()
    a = rayref.get([draw.remote() for _ in range(5)])
    assert len(set(a)) == 5
    assert random.random() == expected_next


def test_infeasible_task_warns_then_fails_when_nothing_can_run(make_cluster):
    """QUI1: an infeasible task warns, then fails TaskUnschedulableError once nothing can run."""
    cluster = make_cluster()

    @rayref.remote(num_gpus=4)
    def needs_gpus():
        return 1

    with pytest.raises(rayref.exceptions.TaskUnschedulableError, match="can ever provide"):
        rayref.get(needs_gpus.remote())
    assert any("cannot be scheduled" in w for w in cluster.warnings)


def test_infeasible_actor_fails_when_nothing_can_run(make_cluster):
    """QUI1: an actor no node can host dies ActorUnschedulableError once nothing can run."""
    make_cluster()

    @rayref.remote(resources={"unicorn": 1})
    class A:
        def f(self):
            return 1

    with pytest.raises(rayref.exceptions.ActorDiedError, match="ActorUnschedulable"):
        rayref.get(A.remote().f.remote())


def test_deadlock_is_reported_not_hung(make_cluster):
    """QUI1: a driver waiting for something that can never happen gets NoProgressError."""
    make_cluster()

    @rayref.remote
    class Gate:
        async def wait_forever(self):
            import asyncio
            await asyncio.Event().wait()

    with pytest.raises(rayref.exceptions.NoProgressError, match="idle"):
        rayref.get(Gate.remote().wait_forever.remote())


def test_node_affinity_and_spread(make_cluster):
    cluster = make_cluster(nodes=[{"num_cpus": 4}] * 3)
    from rayref.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @rayref.remote
    def where():
        time.sleep(0.1)
        return rayref.get_runtime_context().get_node_id()

    target = cluster.nodes[2].node_id
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False))
    assert set(rayref.get([pinned.remote() for _ in range(6)])) == {target}
    time.sleep(1)  # let the resource view catch up with the finished pinned tasks
    spread = rayref.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)])
    assert set(spread) == {n.node_id for n in cluster.nodes}
    missing = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("node-9999", soft=False))
    with pytest.raises(rayref.exceptions.TaskUnschedulableError):
        rayref.get(missing.remote())
    soft = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("node-9999", soft=True))
    assert rayref.get(soft.remote()) in {n.node_id for n in cluster.nodes}


def test_spillback_uses_other_nodes(make_cluster):
    cluster = make_cluster(nodes=[{"num_cpus": 2}] * 4)

    @rayref.remote
    def where():
        time.sleep(1)
        return rayref.get_runtime_context().get_node_id()

    start = cluster.now
    used = rayref.get([where.remote() for _ in range(8)])
    assert len(set(used)) == 4
    assert cluster.now - start < 1.5


def test_large_object_moves_between_nodes(make_cluster):
    cluster = make_cluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1, "resources": {"far": 1}}])

    @rayref.remote(resources={"far": 1})
    def make():
        return np.ones(2_000_000)

    @rayref.remote
    def total(a):
        return float(a.sum())

    ref = make.remote()
    assert rayref.get(total.remote(ref)) == 2_000_000.0
    assert float(rayref.get(ref).sum()) == 2_000_000.0
    nm = cluster.runtime.node_managers
    assert ref.hex() in nm[cluster.nodes[1].node_id].store


def test_objects_are_freed_when_references_drop(make_cluster):
    """LIFE1: once the last ref to a put object is gone, the node store no longer holds it."""
    cluster = make_cluster()
    big = rayref.put(np.zeros(1_000_000))
    time.sleep(0.01)
    head = cluster.runtime.node_managers[cluster.nodes[0].node_id]
    assert big.hex() in head.store
    object_id = big.hex()
    del big
    rayref.get(rayref.put(1))
    time.sleep(0.01)
    assert object_id not in head.store


def test_borrowed_reference_keeps_object_alive(make_cluster):
    """BOR1: an actor keeping a ref it got as an argument can read it after the driver dropped its own."""
    cluster = make_cluster()

    @rayref.remote
    class Holder:
        def hold(self, refs):
            self.refs = refs
            return True

        def read(self):
            return float(rayref.get(self.refs[0]).sum())

    holder = Holder.remote()
    big = rayref.put(np.ones(500_000))
    object_id = big.hex()
    assert rayref.get(holder.hold.remote([big]))
    del big
    time.sleep(1)
    assert rayref.get(holder.read.remote()) == 500_000.0
    head = cluster.runtime.node_managers[cluster.nodes[0].node_id]
    assert object_id in head.store


def test_no_leak_between_runs():
    rayref.init(num_cpus=2, seed=0, transport="sim")

    @rayref.remote
    class A:
        pass

    A.options(name="solo").remote()
    rayref.shutdown()
    assert time.sleep is not None and os.getpid() == os.getpid()
    assert time.time() > 1.7e9 and abs(time.time() - __import__("datetime").datetime.now().timestamp()) < 5
    rayref.init(num_cpus=2, seed=0, transport="sim")
    with pytest.raises(ValueError):
        rayref.get_actor("solo")


def test_story_of_a_task():
    cluster = Cluster(seed=0, sim=SimConfig(keep_trace=True))
    cluster.add_node(num_cpus=1)
    cluster.connect()

    @rayref.remote
    def one():
        return 1

    ref = one.remote()
    assert rayref.get(ref) == 1
    task_id = ref.hex().rsplit(".r", 1)[0]
    kinds = [line.split("|")[3] for line in cluster.story(task_id)]
    assert "PushTask" in kinds and "TaskReply" in kinds
    assert kinds.index("PushTask") < kinds.index("TaskReply")


def test_actor_out_of_scope_dies_even_when_its_last_call_was_cancelled(make_cluster):
    """LIFE1: an actor whose handles are gone dies once its calls are done or cancelled."""
    cluster = make_cluster()

    @rayref.remote
    class Slow:
        def nap(self, seconds):
            time.sleep(seconds)
            return seconds

    slow = Slow.remote()
    first = slow.nap.remote(1)
    second = slow.nap.remote(100)
    actor_id = slow._actor_id
    del slow
    rayref.cancel(second)
    assert rayref.get(first) == 1
    time.sleep(2)
    assert cluster.runtime.control_plane.actors[actor_id].state.value == "DEAD"


def test_what_a_dead_process_owned_dies_with_it(make_cluster):
    """LIFE2: a crashed task's running children and the actors it created are stopped, their resources freed."""
    cluster = make_cluster(nodes=[{"num_cpus": 3}])

    @rayref.remote
    class Orphan:
        def ping(self):
            return "pong"

    @rayref.remote
    def child():
        time.sleep(10**6)

    @rayref.remote(max_retries=0)
    def parent():
        child.remote()
        actor = Orphan.remote()
        rayref.get(actor.ping.remote())
        time.sleep(1)
        os._exit(1)

    with pytest.raises(rayref.exceptions.WorkerCrashedError):
        rayref.get(parent.remote())
    time.sleep(1)
    head = cluster.runtime.node_managers[cluster.nodes[0].node_id]
    assert head.leases == {} and head.available.get("CPU") == 3
    actors = cluster.runtime.control_plane.actors.values()
    assert [a.state.value for a in actors] == ["DEAD"] and "owner" in next(iter(actors)).death_cause
