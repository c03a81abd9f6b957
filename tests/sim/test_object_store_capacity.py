"""Object store capacity on the sim transport: the same answers as tests/grpc/test_object_store_capacity.py.

A 50 MiB store: freed objects leave room, pinned objects beyond it are spilled (and read back),
an object larger than the store is spilled on arrival, copies on other nodes go with their
primary. OS1-OS3 (``validate=True`` checks them after every message), P-OBJ-8, P-OBJ-9.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import rayref
from sim import Cluster, SimConfig

MiB = 1024 * 1024
CAPACITY = 50 * MiB


@pytest.fixture
def cluster():
    cluster = Cluster(seed=0, sim=SimConfig(validate=True))
    cluster.add_node(num_cpus=2, memory=10**9, object_store_memory=CAPACITY)
    cluster.connect()
    yield cluster
    rayref.shutdown()


@rayref.remote
def last(array):
    return int(array[-1])


def _store(cluster, index=0):
    return cluster.runtime.node_managers[cluster.nodes[index].node_id].store


def _settle():
    """Release dropped refs (on the driver's next entry) and let the frees reach the nodes."""
    rayref.put(None)
    time.sleep(1.0)  # virtual: the driver is a simulated process


def _spilled(store) -> int:
    return sum(e.spilled for e in store.objects.values())


def _array(i: int) -> np.ndarray:
    return np.full(16 * MiB // 8, i, dtype=np.int64)


def test_freed_objects_leave_room_without_spilling(cluster):
    store = _store(cluster)
    for i in range(10):
        ref = rayref.put(_array(i))
        assert len(store.objects) <= 2 and store.spilled_bytes == 0
        if i == 9:
            assert rayref.get(ref)[-1] == 9
        del ref
    _settle()
    assert store.objects == {} and store.used == 0


def test_pinned_objects_beyond_capacity_are_spilled_and_read_back(cluster):
    store = _store(cluster)
    refs = [rayref.put(_array(i)) for i in range(6)]
    assert _spilled(store) == 3 and store.used <= CAPACITY
    assert [store.objects[r.hex()].spilled for r in refs] == [True] * 3 + [False] * 3  # oldest first
    assert [int(rayref.get(r)[0]) for r in refs] == list(range(6))
    assert rayref.get([last.remote(r) for r in refs]) == list(range(6))
    del refs
    _settle()
    assert store.objects == {} and store.used == 0 and store.spilled_bytes == 0


def test_an_object_larger_than_the_store_is_spilled_on_arrival(cluster):
    ref = rayref.put(np.ones(64 * MiB, dtype=np.uint8))
    entry = _store(cluster).objects[ref.hex()]
    assert entry.spilled and _store(cluster).used == 0
    assert int(rayref.get(ref)[::4096].sum()) == 64 * MiB // 4096


def test_copies_on_other_nodes_are_freed_with_their_primary(cluster):
    other = cluster.add_node(num_cpus=1, resources={"B": 1}, memory=10**9, object_store_memory=CAPACITY)

    @rayref.remote(resources={"B": 1})
    def where(array):
        return int(array[0]), rayref.get_runtime_context().get_node_id()

    refs = [rayref.put(_array(i)) for i in range(4)]
    assert _spilled(_store(cluster)) == 1
    assert rayref.get([where.remote(r) for r in refs]) == [(i, other.node_id) for i in range(4)]
    copies = _store(cluster, 1)
    assert len(copies.objects) == 3 and _spilled(copies) == 0  # the least recently used copy was evicted
    del refs
    _settle()
    assert _store(cluster).objects == {} and copies.objects == {} and copies.used == 0
