"""Killing a node in the simulated cluster (``sim.Cluster.kill_node``, protocol F-8, NODE1).

Each test runs a three-node cluster (the head ``node-0001`` with the driver, ``node-0002`` and
``node-0003``) and kills ``node-0002`` while work runs there; the control plane hears of it
``SimConfig.node_death_detection_s`` (15 virtual seconds) later.
"""
from __future__ import annotations

import time

import pytest

import rayref
from rayref.util.scheduling_strategies import NodeAffinitySchedulingStrategy

HEAD, VICTIM, OTHER = "node-0001", "node-0002", "node-0003"
DETECTION = 15.0
BIG = 200 * 1024


def on(node_id: str, soft: bool = True) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)


def three_nodes(make_cluster, seed: int = 0):
    return make_cluster(seed=seed, nodes=[{"num_cpus": 2}] * 3)


@rayref.remote
def where() -> str:
    return rayref.get_runtime_context().get_node_id()


@rayref.remote
def slow_double(x: int) -> tuple[int, str]:
    time.sleep(5)
    return 2 * x, rayref.get_runtime_context().get_node_id()


def test_task_on_a_killed_node_is_retried_elsewhere(make_cluster):
    """NODE1, RETRY1: the task's node dies mid-task; after detection the task re-runs on a live node."""
    cluster = three_nodes(make_cluster)
    start = cluster.now
    ref = slow_double.options(scheduling_strategy=on(VICTIM), max_retries=1).remote(21)
    time.sleep(1)
    cluster.kill_node(VICTIM)
    value, node = rayref.get(ref)
    assert value == 42 and node in (HEAD, OTHER)
    assert cluster.now - start == pytest.approx(1 + DETECTION + 5, abs=0.01)  # killed, detected, re-run
    assert [(n["NodeID"], n["Alive"]) for n in rayref.nodes()] == [(HEAD, True), (VICTIM, False), (OTHER, True)]
    cluster.validate()


def test_task_without_retries_fails_node_died(make_cluster):
    """NODE1: with max_retries=0 the task fails NodeDiedError naming the node (Ray 2.x's error)."""
    cluster = three_nodes(make_cluster)
    ref = slow_double.options(scheduling_strategy=on(VICTIM), max_retries=0).remote(1)
    time.sleep(1)
    cluster.kill_node(VICTIM)
    with pytest.raises(rayref.exceptions.NodeDiedError, match=f"{VICTIM}, died"):
        rayref.get(ref)


def test_task_pinned_to_a_killed_node_cannot_be_retried(make_cluster):
    """NODE1, QUI1: the retry of a task with hard affinity to the dead node fails TaskUnschedulableError."""
    cluster = three_nodes(make_cluster)
    ref = slow_double.options(scheduling_strategy=on(VICTIM, soft=False), max_retries=1).remote(1)
    time.sleep(1)
    cluster.kill_node(VICTIM)
    with pytest.raises(rayref.exceptions.TaskUnschedulableError, match=VICTIM):
        rayref.get(ref)


@rayref.remote(max_restarts=1, max_task_retries=1)
class Counter:
    def __init__(self):
        self.count = 0

    def add(self, seconds: float = 0.0) -> tuple[int, str]:
        time.sleep(seconds)
        self.count += 1
        return self.count, rayref.get_runtime_context().get_node_id()


def test_actor_on_a_killed_node_restarts_elsewhere_and_its_call_is_retried(make_cluster):
    """NODE1, RETRY1: max_restarts=1 restarts the actor on a live node; the in-flight call re-runs there."""
    cluster = three_nodes(make_cluster)
    counter = Counter.options(scheduling_strategy=on(VICTIM)).remote()
    assert rayref.get(counter.add.remote()) == (1, VICTIM)
    in_flight = counter.add.remote(5)
    time.sleep(1)
    cluster.kill_node(VICTIM)
    count, node = rayref.get(in_flight)
    assert count == 1 and node in (HEAD, OTHER)  # a fresh instance: its state starts over
    actor = next(a for a in cluster.runtime.control_plane.actors.values())
    assert actor.state.value == "ALIVE" and actor.num_restarts == 1


def test_actor_without_restarts_dies_with_its_node(make_cluster):
    """NODE1: max_restarts=0: calls in flight and later calls fail ActorDiedError saying the node died."""
    cluster = three_nodes(make_cluster)
    counter = Counter.options(scheduling_strategy=on(VICTIM), max_restarts=0).remote()
    assert rayref.get(counter.add.remote())[1] == VICTIM
    in_flight = counter.add.remote(5)
    time.sleep(1)
    cluster.kill_node(VICTIM)
    with pytest.raises(rayref.exceptions.ActorDiedError, match=f"node {VICTIM} died"):
        rayref.get(in_flight)
    with pytest.raises(rayref.exceptions.ActorDiedError, match=f"node {VICTIM} died"):
        rayref.get(counter.add.remote())


@rayref.remote
def big_value(tag: int) -> bytes:
    return bytes([tag]) * BIG


@rayref.remote
def size_of(data: bytes) -> int:
    return len(data)


def test_object_only_on_a_killed_node_is_lost_and_one_with_a_copy_elsewhere_is_read(make_cluster):
    """NODE1: a large return stored only on the dead node is an ObjectLostError (no lineage
    reconstruction); one the driver had already fetched, and a small inline one, stay readable,
    also as arguments of tasks on other nodes."""
    cluster = three_nodes(make_cluster)
    only_there, fetched = [big_value.options(scheduling_strategy=on(VICTIM)).remote(i) for i in (1, 2)]
    small = where.options(scheduling_strategy=on(VICTIM)).remote()
    rayref.wait([only_there, small], num_returns=2, fetch_local=False)
    assert rayref.get(fetched) == bytes([2]) * BIG and rayref.get(small) == VICTIM
    cluster.kill_node(VICTIM)
    time.sleep(DETECTION + 1)
    with pytest.raises(rayref.exceptions.ObjectLostError, match=f"only copy was on node {VICTIM}"):
        rayref.get(only_there)
    with pytest.raises(rayref.exceptions.ObjectLostError):
        rayref.get(size_of.options(scheduling_strategy=on(OTHER, soft=False)).remote(only_there))
    assert rayref.get(fetched) == bytes([2]) * BIG and rayref.get(small) == VICTIM
    assert rayref.get(size_of.options(scheduling_strategy=on(OTHER, soft=False)).remote(fetched)) == BIG


@rayref.remote
def put_and_share() -> list:
    return [rayref.put(b"y" * BIG)]


def test_borrowed_object_owned_on_a_killed_node_is_owner_died(make_cluster):
    """NODE1: an object owned by a process of the dead node is gone: OwnerDiedError for its borrowers."""
    cluster = three_nodes(make_cluster)
    [inner] = rayref.get(put_and_share.options(scheduling_strategy=on(VICTIM)).remote())
    cluster.kill_node(VICTIM)
    with pytest.raises(rayref.exceptions.OwnerDiedError, match=VICTIM):
        rayref.get(inner)


@rayref.remote
class Keeper:
    """Owns a large return computed on OTHER, so its primary copy lives in OTHER's store."""

    def keep(self) -> str:
        self.ref = big_value.options(scheduling_strategy=on(OTHER, soft=False)).remote(7)
        rayref.wait([self.ref], fetch_local=False)
        return self.ref.hex()


@pytest.mark.parametrize("death", ["node", "process"])
def test_primaries_owned_by_a_dead_owner_are_freed_in_surviving_stores(make_cluster, death):
    """NODE1, P-EVT-6, P-ACT-7: a primary copy whose owner died (its node killed, or the owner
    process itself killed) is freed by the node that stores it: no one is left to free it, as
    Ray unpins a dead owner's objects."""
    cluster = three_nodes(make_cluster)
    keeper = Keeper.options(scheduling_strategy=on(VICTIM, soft=False)).remote()
    object_id = rayref.get(keeper.keep.remote())
    other = cluster.runtime.node_managers[OTHER]
    assert other.store.objects[object_id].owner.startswith(VICTIM + ".")
    if death == "node":
        cluster.kill_node(VICTIM)
        time.sleep(DETECTION + 1)
    else:
        rayref.kill(keeper)
        time.sleep(1)
    assert object_id not in other.store and other.store.used == 0
    cluster.validate()


@rayref.remote
def parent_of_a_pinned_child() -> None:
    rayref.get(child.options(scheduling_strategy=on(HEAD, soft=False)).remote())


@rayref.remote
def child() -> None:
    time.sleep(10**6)


def test_leases_on_and_of_a_killed_node_are_released(make_cluster):
    """NODE1, NM1, LIFE2: the driver's lease on the dead node is dropped, and the head's worker leased
    to a process of the dead node (a running child) is killed and its CPU freed."""
    cluster = three_nodes(make_cluster)
    parent = parent_of_a_pinned_child.options(scheduling_strategy=on(VICTIM), max_retries=0).remote()
    time.sleep(1)
    head = cluster.runtime.node_managers[HEAD]
    driver = cluster.runtime.driver.cw
    assert head.available.get("CPU") == 1 and [lease.node_id for lease in driver.normal.leases.values()] == [VICTIM]
    cluster.kill_node(VICTIM)
    with pytest.raises(rayref.exceptions.NodeDiedError):
        rayref.get(parent)
    time.sleep(1)
    assert driver.normal.leases == {} and head.leases == {} and head.available.get("CPU") == 2
    cluster.validate()


def test_lease_request_in_flight_to_a_killed_node_is_made_again(make_cluster):
    """NODE1: a spilled lease request lost with its node is asked again after detection, not awaited forever."""
    cluster = three_nodes(make_cluster)
    cluster.network.slow_link(HEAD, VICTIM, latency=1.0, bandwidth=1e9)
    ref = where.options(scheduling_strategy=on(VICTIM)).remote()
    cluster.kill_node(VICTIM, at=cluster.now + 0.5)  # the spilled request is still on the slow link
    assert rayref.get(ref) in (HEAD, OTHER)
    assert cluster.now > DETECTION


def test_kill_node_refuses_the_head_an_unknown_node_and_the_past(make_cluster):
    cluster = three_nodes(make_cluster)
    with pytest.raises(ValueError, match="head node"):
        cluster.kill_node(HEAD)
    with pytest.raises(ValueError, match="No node 'node-0009'"):
        cluster.kill_node("node-0009")
    time.sleep(1)
    with pytest.raises(ValueError, match="in the past"):
        cluster.kill_node(VICTIM, at=0.5)


def scenario(make_cluster, seed: int):
    cluster = three_nodes(make_cluster, seed)
    refs = [slow_double.options(max_retries=2).remote(i) for i in range(6)]
    counter = Counter.options(scheduling_strategy=on(VICTIM)).remote()
    calls = [counter.add.remote(1) for _ in range(3)]
    cluster.kill_node(VICTIM, at=2.0)
    results = rayref.get(refs), rayref.get(calls)
    digest, now = cluster.trace_digest(), cluster.now
    rayref.shutdown()
    return digest, results, now


def test_same_seed_same_trace_with_a_node_killed(make_cluster):
    """DET1: a run with a node killed replays exactly: same digest, results and virtual time."""
    first = scenario(make_cluster, seed=3)
    assert scenario(make_cluster, seed=3) == first
    assert [value for value, _ in first[1][0]] == [0, 2, 4, 6, 8, 10]
    assert scenario(make_cluster, seed=4)[0] != first[0]
