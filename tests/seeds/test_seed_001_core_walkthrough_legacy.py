"""Seed 001: the old "Ray Core Walkthrough" (object IDs era, ``ray.exceptions.RayTimeoutError``).

The text lost its decorators and some lines in extraction; each example is reconstructed as the
prose says it is meant to be (e.g. "A Ray remote function." -> ``@ray.remote``; "remote functions
can return multiple object IDs" -> ``@ray.remote(num_returns=3)``; the fractional example ->
``@ray.remote(num_cpus=0.5, num_gpus=0.5)``; the timeout example's ``long_running_function`` body
-> a sleep longer than the 4 s timeout). Run on rayref's sim transport with the documented answers.
"""
from __future__ import annotations

import time

import pytest

import rayref as ray
from rayref.object_ref import ObjectRef

RESOURCES = {"num_cpus": 8, "num_gpus": 4, "resources": {"Custom": 2}}


@pytest.fixture
def walkthrough(make_cluster):
    """The page's example machine: ``ray.init(num_cpus=8, num_gpus=4, resources={'Custom': 2})``."""
    cluster = make_cluster(seed=0, nodes=(RESOURCES,))
    yield cluster
    ray.shutdown()


def test_starting_ray_with_explicit_resources():
    """"you can override this default behavior by passing in specific resources, e.g.,
    ray.init(num_cpus=8, num_gpus=4, resources={'Custom': 2})"."""
    ray.init(num_cpus=8, num_gpus=4, resources={"Custom": 2}, seed=0)
    total = ray.cluster_resources()
    assert (total["CPU"], total["GPU"], total["Custom"]) == (8.0, 4.0, 2.0)


def test_regular_vs_remote_function(walkthrough):
    # A regular Python function.
    def regular_function():
        return 1

    # A Ray remote function.
    @ray.remote
    def remote_function():
        return 1

    assert regular_function() == 1

    object_id = remote_function.remote()
    assert isinstance(object_id, ObjectRef)

    # The value of the original `regular_function`
    assert ray.get(object_id) == 1

    # Calling the remote version directly is not how it is invoked (it is invoked with .remote()).
    with pytest.raises(TypeError):
        remote_function()


def test_invocations_serial_vs_parallel(walkthrough):
    def regular_function():
        return 1

    @ray.remote
    def remote_function():
        return 1

    # These happen serially.
    serial = []
    for _ in range(4):
        serial.append(regular_function())
    assert serial == [1, 1, 1, 1]

    # These happen in parallel: .remote() does not block (no virtual time passes while submitting).
    start = time.monotonic()
    refs = []
    for _ in range(4):
        refs.append(remote_function.remote())
    assert time.monotonic() == start
    assert ray.get(refs) == [1, 1, 1, 1]


def test_remote_invocations_run_in_parallel(walkthrough):
    """The same claim with work that takes time: four 1 s tasks on 8 CPUs take ~1 s, not 4 s."""
    @ray.remote
    def remote_function():
        time.sleep(1)
        return 1

    start = time.time()
    refs = [remote_function.remote() for _ in range(4)]
    assert time.time() - start < 0.01  # submitting did not wait for any task
    assert ray.get(refs) == [1, 1, 1, 1]
    elapsed = time.time() - start
    assert 1.0 <= elapsed < 1.5, elapsed


def test_object_ids_passed_to_remote_functions(walkthrough):
    @ray.remote
    def remote_function():
        return 1

    @ray.remote
    def remote_chain_function(value):
        return value + 1

    y1_id = remote_function.remote()
    assert ray.get(y1_id) == 1

    chained_id = remote_chain_function.remote(y1_id)
    assert ray.get(chained_id) == 2


def test_dependent_task_waits_for_its_argument(walkthrough):
    """"The second task will not be executed until the first task has finished executing"."""
    @ray.remote
    def remote_function():
        time.sleep(3)
        return 1, time.time()

    @ray.remote
    def remote_chain_function(value):
        result, first_finished = value
        return result + 1, first_finished, time.time()

    start = time.time()
    y1_id = remote_function.remote()
    chained_id = remote_chain_function.remote(y1_id)
    value, first_finished, second_started = ray.get(chained_id)
    assert value == 2
    assert first_finished - start >= 3
    assert second_started >= first_finished


def test_resource_requirements(walkthrough):
    @ray.remote(num_cpus=4, num_gpus=2)
    def f():
        return 1

    assert ray.get(f.remote()) == 1

    # Ray also supports fractional resource requirements
    @ray.remote(num_cpus=0.5, num_gpus=0.5)
    def h():
        return 1

    assert ray.get(h.remote()) == 1

    # Ray support custom resources too.
    @ray.remote(resources={"Custom": 1})
    def f():  # noqa: F811 - the page redefines f
        return 1

    assert ray.get(f.remote()) == 1


def test_default_resources_are_one_cpu(walkthrough):
    """"If you do not specify any resources in the @ray.remote decorator, the default is 1 CPU"."""
    @ray.remote
    def g():
        return ray.get_runtime_context().get_assigned_resources()

    assert ray.get(g.remote()) == {"CPU": 1.0}


def _max_overlap(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = running = 0
    for _, delta in events:
        running += delta
        best = max(best, running)
    return best


def test_concurrent_requirements_never_exceed_node_total(walkthrough):
    """RES1: "the sum of the resource requirements of all of the concurrently executing tasks on a given
    node cannot exceed the node's total resources": 8 CPUs / 4 GPUs fit two num_cpus=4,num_gpus=2
    tasks at once, and 2 Custom fit two resources={'Custom': 1} tasks at once."""
    @ray.remote(num_cpus=4, num_gpus=2)
    def f():
        start = time.time()
        time.sleep(1)
        return start, time.time()

    @ray.remote(resources={"Custom": 1})
    def c():
        start = time.time()
        time.sleep(1)
        return start, time.time()

    start = time.time()
    spans = ray.get([f.remote() for _ in range(5)])
    assert _max_overlap(spans) == 2
    assert 3.0 <= time.time() - start < 3.5  # 5 tasks, 2 at a time, 1 s each

    start = time.time()
    spans = ray.get([c.remote() for _ in range(4)])
    assert _max_overlap(spans) == 2
    assert 2.0 <= time.time() - start < 2.5


def test_return_multiple_object_ids(walkthrough):
    @ray.remote(num_returns=3)
    def return_multiple():
        return 1, 2, 3

    a_id, b_id, c_id = return_multiple.remote()
    assert all(isinstance(r, ObjectRef) for r in (a_id, b_id, c_id))
    assert ray.get([a_id, b_id, c_id]) == [1, 2, 3]
    assert (ray.get(a_id), ray.get(b_id), ray.get(c_id)) == (1, 2, 3)


def test_object_ids_from_put(walkthrough):
    y = 1
    object_id = ray.put(y)
    assert isinstance(object_id, ObjectRef)

    y = 1
    obj_id = ray.put(y)
    assert ray.get(obj_id) == 1


def test_get_timeout(walkthrough, capsys):
    from rayref.exceptions import RayTimeoutError

    assert RayTimeoutError is ray.exceptions.GetTimeoutError

    @ray.remote
    def long_running_function():
        time.sleep(8)
        return "done"

    start = time.time()
    obj_id = long_running_function.remote()
    timed_out = False
    try:
        ray.get(obj_id, timeout=4)
    except RayTimeoutError:
        print("`get` timed out.")
        timed_out = True
    assert timed_out
    assert capsys.readouterr().out == "`get` timed out.\n"
    assert time.time() - start == pytest.approx(4, abs=0.01)  # virtual seconds

    # The task is not affected by the caller giving up; it finishes at ~8 s.
    assert ray.get(obj_id) == "done"
    assert time.time() - start == pytest.approx(8, abs=0.1)


def test_get_list_and_task_exception(walkthrough):
    """ray.get of a list returns a list; "An exception is raised if the task that created the
    object or that created one of the objects raised an exception"."""
    @ray.remote
    def ok(x):
        return x

    @ray.remote
    def broken():
        raise ZeroDivisionError("boom")

    assert ray.get([ok.remote(i) for i in range(3)]) == [0, 1, 2]
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get([ok.remote(0), broken.remote()])
    assert isinstance(info.value, ZeroDivisionError)
    assert "boom" in str(info.value)


def test_wait(walkthrough):
    @ray.remote
    def sleeper(seconds):
        time.sleep(seconds)
        return seconds

    object_ids = [sleeper.remote(s) for s in (3, 1, 2, 0.5)]

    ready_ids, remaining_ids = ray.wait(object_ids, num_returns=1, timeout=None)
    assert ready_ids == [object_ids[3]]
    assert remaining_ids == object_ids[:3]  # the rest, in input order
    assert ray.get(ready_ids) == [0.5]

    # Ordering of the input list is preserved in both lists.
    ready_ids, remaining_ids = ray.wait(object_ids, num_returns=3)
    assert ready_ids == [object_ids[1], object_ids[2], object_ids[3]]
    assert remaining_ids == [object_ids[0]]


def test_wait_timeout_returns_early(walkthrough):
    @ray.remote
    def sleeper(seconds):
        time.sleep(seconds)
        return seconds

    start = time.time()
    object_ids = [sleeper.remote(s) for s in (5, 1, 6, 2)]
    ready_ids, remaining_ids = ray.wait(object_ids, num_returns=4, timeout=3)
    assert time.time() - start == pytest.approx(3, abs=0.01)
    assert ready_ids == [object_ids[1], object_ids[3]]
    assert remaining_ids == [object_ids[0], object_ids[2]]


def test_wait_requires_unique_ids(walkthrough):
    """"Note that these IDs must be unique"."""
    ref = ray.put(1)
    with pytest.raises(ValueError):
        ray.wait([ref, ref])


def test_remote_objects_are_immutable(walkthrough):
    """"Remote objects are immutable" and numpy results are zero-copy, read-only views."""
    import numpy as np

    ref = ray.put(np.arange(10))
    value = ray.get(ref)
    with pytest.raises(ValueError):
        value[0] = 100
    assert ray.get(ref).tolist() == list(range(10))


def test_counter_actors(walkthrough):
    @ray.remote
    class Counter(object):
        def __init__(self):
            self.value = 0

        def increment(self):
            self.value += 1
            return self.value

    a1 = Counter.remote()
    a2 = Counter.remote()

    obj_id = a1.increment.remote()
    assert ray.get(obj_id) == 1
    assert ray.get(a2.increment.remote()) == 1  # a2 has its own state

    # Create ten Counter actors.
    counters = [Counter.remote() for _ in range(10)]

    # Increment each Counter once and get the results. These tasks all happen in
    # parallel.
    results = ray.get([c.increment.remote() for c in counters])
    assert results == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]

    # Increment the first Counter five times. These tasks are executed serially
    # and share state.
    results = ray.get([counters[0].increment.remote() for _ in range(5)])
    assert results == [2, 3, 4, 5, 6]


def test_methods_on_different_actors_run_in_parallel(walkthrough):
    @ray.remote
    class Counter(object):
        def __init__(self):
            self.value = 0

        def increment(self):
            time.sleep(1)
            self.value += 1
            return self.value

    counters = [Counter.remote() for _ in range(10)]
    ray.get([c.increment.remote() for c in counters])  # actors up
    start = time.time()
    assert ray.get([c.increment.remote() for c in counters]) == [2] * 10
    assert 1.0 <= time.time() - start < 1.5  # ten actors, in parallel
    start = time.time()
    assert ray.get([counters[0].increment.remote() for _ in range(5)]) == [3, 4, 5, 6, 7]
    assert 5.0 <= time.time() - start < 5.5  # one actor, serially


def test_actor_resource_requirements(walkthrough):
    @ray.remote(num_cpus=2, num_gpus=0.5)
    class Actor(object):
        pass

    before = ray.available_resources()
    actor = Actor.remote()
    assert actor is not None
    deadline = time.time() + 5
    while time.time() < deadline:
        now = ray.available_resources()
        if now["CPU"] == before["CPU"] - 2:
            break
        time.sleep(0.05)
    assert now["CPU"] == before["CPU"] - 2
    assert now["GPU"] == before["GPU"] - 0.5
    ray.kill(actor)
    deadline = time.time() + 5
    while time.time() < deadline and ray.available_resources()["CPU"] != before["CPU"]:
        time.sleep(0.05)
    assert ray.available_resources()["GPU"] == before["GPU"]


def test_put_objects_stay_pinned_while_referenced(make_cluster):
    """Object Eviction: "Objects created with ray.put are pinned in memory while a Python reference
    to the object ID returned by the put exists": filling a 100 MB store with 5 x 40 MB puts loses
    none of them, and once the references are dropped the space is reusable."""
    import numpy as np

    make_cluster(nodes=({"num_cpus": 2, "object_store_memory": 100 * 1024**2},))
    refs = [ray.put(np.full(40 * 1024**2 // 8, i, dtype=np.float64)) for i in range(5)]
    assert [float(ray.get(r)[-1]) for r in refs] == [0.0, 1.0, 2.0, 3.0, 4.0]
    del refs
    for i in range(5):
        ref = ray.put(np.full(40 * 1024**2 // 8, 10 + i, dtype=np.float64))
        assert float(ray.get(ref)[0]) == 10 + i
        del ref
