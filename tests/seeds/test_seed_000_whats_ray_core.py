"""Seed 000: "What's Ray Core?" (Ray 2.53 walkthrough, ray-core/walkthrough.rst).

Every code block of the page, run on rayref's sim transport, with the page's documented output.
"""
from __future__ import annotations

import numpy as np
import pytest

import rayref as ray
from rayref.object_ref import ObjectRef


@pytest.fixture
def walkthrough_ray():
    """The page's first step, ``ray.init()``, pinned to a reproducible cluster (4 CPUs, seed 0)."""
    ray.init(num_cpus=4, seed=0)
    assert ray.is_initialized()
    yield ray
    ray.shutdown()


def test_getting_started_plain_init(seed_transport):
    """``import ray; ray.init()`` exactly as written: no arguments, a local cluster starts (a real one
    unless RAYREF_TRANSPORT says otherwise)."""
    assert not ray.is_initialized()
    info = ray.init()
    assert ray.is_initialized()
    assert info["transport"] == seed_transport
    assert ray.cluster_resources()["CPU"] >= 1


def test_bare_init_starts_a_real_local_cluster(monkeypatch):
    """W-9: with no transport named anywhere, init() starts processes, as ray.init() does."""
    monkeypatch.delenv("RAYREF_TRANSPORT")
    info = ray.init()
    assert info["transport"] == "grpc" and info["session"]


def test_first_remote_call_initializes_implicitly():
    """Note: "Unless you explicitly call ray.init(), the first use of a Ray remote API call will
    implicitly call ray.init() with no arguments"."""
    @ray.remote
    def square(x):
        return x * x

    assert not ray.is_initialized()
    ref = square.remote(3)
    assert ray.is_initialized()
    assert ray.get(ref) == 9


def test_running_a_task(walkthrough_ray):
    # Define the square task.
    @ray.remote
    def square(x):
        return x * x

    # Launch four parallel square tasks.
    futures = [square.remote(i) for i in range(4)]
    assert all(isinstance(f, ObjectRef) for f in futures)

    # Retrieve results.
    assert ray.get(futures) == [0, 1, 4, 9]


def test_calling_an_actor(walkthrough_ray):
    # Define the Counter actor.
    @ray.remote
    class Counter:
        def __init__(self):
            self.i = 0

        def get(self):
            return self.i

        def incr(self, value):
            self.i += value

    # Create a Counter actor.
    c = Counter.remote()

    # Submit calls to the actor. These calls run asynchronously but in
    # submission order on the remote actor process.
    for _ in range(10):
        c.incr.remote(1)

    # Retrieve final actor state.
    assert ray.get(c.get.remote()) == 10


def test_passing_objects(walkthrough_ray):
    # Define a task that sums the values in a matrix.
    @ray.remote
    def sum_matrix(matrix):
        return np.sum(matrix)

    # Call the task with a literal argument value.
    result = ray.get(sum_matrix.remote(np.ones((100, 100))))
    assert result == 10000.0
    assert str(result) == "10000.0"

    # Put a large array into the object store.
    matrix_ref = ray.put(np.ones((1000, 1000)))
    assert isinstance(matrix_ref, ObjectRef)

    # Call the task with the object reference as an argument.
    result = ray.get(sum_matrix.remote(matrix_ref))
    assert result == 1000000.0
    assert str(result) == "1000000.0"
