"""Seed 003: the Ray README. It has no code; these tests check its Ray Core claims:

- Tasks: Stateless functions executed in the cluster.
- Actors: Stateful worker processes created in the cluster.
- Objects: Immutable values accessible across the cluster.
- "you can seamlessly scale the same code from a laptop to a cluster".
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import rayref as ray

TWO_NODES = ({"num_cpus": 2}, {"num_cpus": 2})


def test_tasks_are_functions_executed_in_the_cluster(make_cluster):
    cluster = make_cluster(nodes=TWO_NODES)

    @ray.remote
    def where(i):
        time.sleep(1)
        return i * 10, ray.get_runtime_context().get_node_id()

    results = ray.get([where.remote(i) for i in range(4)])
    assert [value for value, _ in results] == [0, 10, 20, 30]
    # Four 1 s tasks, 2 CPUs per node: they run on both nodes.
    assert {node for _, node in results} == {n.node_id for n in cluster.nodes}


def test_actors_are_stateful_worker_processes(make_cluster):
    make_cluster(nodes=TWO_NODES)

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n, os.getpid()

    a, b = Counter.remote(), Counter.remote()
    results_a = ray.get([a.incr.remote() for _ in range(3)])
    results_b = ray.get([b.incr.remote() for _ in range(2)])
    assert [n for n, _ in results_a] == [1, 2, 3]
    assert [n for n, _ in results_b] == [1, 2]
    pids_a, pids_b = {p for _, p in results_a}, {p for _, p in results_b}
    assert len(pids_a) == 1 and len(pids_b) == 1 and pids_a != pids_b  # one process per actor
    assert os.getpid() not in pids_a | pids_b  # not the driver


def test_objects_are_immutable_and_accessible_across_the_cluster(make_cluster):
    cluster = make_cluster(nodes=({"num_cpus": 0}, {"num_cpus": 2}))
    ref = ray.put(np.arange(1000))

    @ray.remote
    def read(array):
        try:
            array[0] = -1
            mutated = True
        except ValueError:
            mutated = False
        return int(array.sum()), mutated, ray.get_runtime_context().get_node_id()

    total, mutated, node = ray.get(read.remote(ref))
    assert total == sum(range(1000))
    assert mutated is False
    assert node == cluster.nodes[1].node_id  # read on the other node than the driver's
    value = ray.get(ref)
    assert value[0] == 0 and not value.flags.writeable


@pytest.mark.parametrize("nodes", [({"num_cpus": 1},), ({"num_cpus": 4},) * 3])
def test_same_code_from_laptop_to_cluster(make_cluster, nodes):
    make_cluster(nodes=nodes)

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Sum:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

    acc = Sum.remote()
    refs = [acc.add.remote(square.remote(i)) for i in range(20)]
    assert ray.get(refs)[-1] == sum(i * i for i in range(20))
