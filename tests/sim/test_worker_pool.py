"""The worker pool shrinks back to one worker per CPU (P-LEASE-12, NM5): workers started while
others were blocked in ``get`` exit once idle for ``idle_worker_timeout``, unless they hold
something."""
from __future__ import annotations

import time

import rayref


@rayref.remote
def leaf() -> int:
    time.sleep(0.5)
    return 1


@rayref.remote
def parent() -> int:
    return sum(rayref.get([leaf.remote() for _ in range(4)]))


@rayref.remote
def put_inside() -> list:
    return [rayref.put(b"owned by the worker that ran me")]


def test_workers_beyond_one_per_cpu_exit_after_the_idle_timeout(make_cluster):
    cluster = make_cluster(nodes=[{"num_cpus": 2}])
    nm = cluster.runtime.node_managers["node-0001"]
    assert rayref.get([parent.remote() for _ in range(2)]) == [4, 4]
    assert len(nm.workers) > 2  # the blocked parents lent their CPUs: more workers were started
    time.sleep(3 * cluster.runtime.config.idle_worker_timeout)
    assert len(nm.workers) == 2 and len(nm.idle) == 2
    assert rayref.get(parent.remote()) == 4  # and the pool still serves
    cluster.validate()


def test_a_worker_that_owns_an_object_someone_holds_does_not_exit(make_cluster):
    """The worker that owns an object the driver holds is asked (it became the oldest idle one)
    and refuses: it is idle again; the next oldest, holding nothing, exits instead."""
    cluster = make_cluster(nodes=[{"num_cpus": 1}])
    nm = cluster.runtime.node_managers["node-0001"]
    assert rayref.get(parent.remote()) == 4
    [inner] = rayref.get(put_inside.remote())
    owner = inner.owner_address()
    for _ in range(len(nm.workers) - 1):  # each task takes the oldest idle worker: the owner becomes the oldest
        time.sleep(0.1)  # the lease goes back (it lingers 10 ms for a next task)
        rayref.get(leaf.remote())
    assert nm.idle[0] == owner
    asked_after = cluster.now
    time.sleep(3 * cluster.runtime.config.idle_worker_timeout)
    assert owner in nm.workers and nm.workers[owner].idle_since > asked_after  # asked, refused, idle again
    assert list(nm.workers) == [owner]
    assert rayref.get(inner) == b"owned by the worker that ran me"
    cluster.validate()
