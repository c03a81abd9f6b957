"""Seed 002: Anyscale's notebook "Introduction to Ray Core (Advancement): Object store, Tasks, Actors".

Every cell, run on rayref's sim transport, with the notebook's documented output. Where the
notebook's output is random (random failures, random sleeps, random matrices) the tests assert
the behaviour the notebook demonstrates rather than its exact numbers; where cells sleep, they
assert on virtual time.
"""
from __future__ import annotations

import os
import random
import re
import sys
import time

import numpy as np
import pytest

import rayref as ray
from rayref.object_ref import ObjectRef


# ---------------------------------------------------------------------------------------------
# 1. Object store
# ---------------------------------------------------------------------------------------------

def test_first_ray_call_starts_a_local_instance():
    """The notebook never calls ray.init(): its first ``ray.put`` "Started a local Ray instance"."""
    assert not ray.is_initialized()
    obj_ref = ray.put(np.arange(4))
    assert ray.is_initialized()
    assert isinstance(obj_ref, ObjectRef)
    assert ray.get(obj_ref).tolist() == [0, 1, 2, 3]


def test_object_store_put_get_1gb(ray_sim, capsys):
    """In [2]-[6]: a ~1 GB matrix, put then get: equal, but not the same object (and read-only)."""
    large_matrix = np.random.rand(1024, 1024, 1024//8)  # approx. 1 GB
    size_in_bytes = sys.getsizeof(large_matrix)

    print(f"large_matrix has: {size_in_bytes/1024/1024/1024:.2f} GB")
    assert capsys.readouterr().out == "large_matrix has: 1.00 GB\n"

    obj_ref = ray.put(large_matrix)
    assert isinstance(obj_ref, ObjectRef)
    assert repr(obj_ref).startswith("ObjectRef(")

    large_mat_from_object_store = ray.get(obj_ref)

    assert np.array_equal(large_mat_from_object_store, large_matrix) is True
    assert (large_mat_from_object_store is large_matrix) is False
    # Remote objects are immutable: the value read back is a read-only view of the stored copy.
    assert large_mat_from_object_store.flags.writeable is False
    with pytest.raises(ValueError):
        large_mat_from_object_store[0, 0, 0] = 1.0
    assert not np.shares_memory(large_mat_from_object_store, large_matrix)


def test_pass_object_as_top_level_argument(ray_sim):
    """In [7]-[10]: the same two put matrices, passed to 10 tasks, give 10 equal results."""
    @ray.remote
    def compute(x, y):
        return int(np.matmul(x, y).sum())

    mat1 = np.random.rand(32, 32)
    mat2 = np.random.rand(32, 32)
    mat1_ref = ray.put(mat1)
    mat2_ref = ray.put(mat2)
    assert repr(mat1_ref).startswith("ObjectRef(") and mat1_ref != mat2_ref

    collection = []
    for i in range(10):
        collection.append(compute.remote(mat1_ref, mat2_ref))

    results = ray.get(collection)
    expected = int(np.matmul(mat1, mat2).sum())  # the notebook's 8184 is for its random matrices
    assert results == [expected] * 10
    assert all(type(r) is int for r in results)


# ---------------------------------------------------------------------------------------------
# 2. Chaining Tasks and Passing Data
# ---------------------------------------------------------------------------------------------

def _chain_functions():
    @ray.remote
    def remote_add(a, b):
        return a + b

    @ray.remote
    def expensive_square(x):
        time.sleep(5)
        return x**2

    return remote_add, expensive_square


def test_chaining_anti_pattern(ray_sim):
    """In [11]: fetching the intermediate result to the driver, then submitting the second task."""
    remote_add, expensive_square = _chain_functions()
    start = time.time()

    # 1st task
    square_ref = expensive_square.remote(2)
    square_value = ray.get(square_ref)
    assert square_value == 4

    # 2nd task
    sum_ref = remote_add.remote(1, square_value)
    sum_value = ray.get(sum_ref)
    assert sum_value == 5
    assert 5 <= time.time() - start < 5.5  # virtual seconds


def test_chaining_by_passing_object_ref(ray_sim):
    """In [12]: pass the ObjectRef straight to the second task; Ray resolves it first."""
    remote_add, expensive_square = _chain_functions()
    start = time.time()

    square_ref = expensive_square.remote(2)
    sum_ref = remote_add.remote(1, square_ref)
    assert time.time() == start  # nothing blocked the driver
    sum_value = ray.get(sum_ref)
    assert sum_value == 5
    assert 5 <= time.time() - start < 5.5


def test_nested_refs_in_containers_are_not_resolved(ray_sim):
    """In [13]: wrapping the ref in a list bypasses de-referencing; the task gets [ref] + [ref]."""
    remote_add, expensive_square = _chain_functions()

    ref = expensive_square.remote(1)
    out_ref = remote_add.remote([ref], [ref])
    out = ray.get(out_ref)
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(r, ObjectRef) for r in out)
    assert out == [ref, ref]
    assert ray.get(out) == [1, 1]


# ---------------------------------------------------------------------------------------------
# 3. Task retries
# ---------------------------------------------------------------------------------------------

def _incorrect_square():
    @ray.remote
    def incorrect_square(x: int, prob: float) -> int:
        # Simulate potential failures
        if random.random() < prob:  # % chance of failure
            raise ValueError("Random failure")
        return x**2

    return incorrect_square


def test_application_error_fails_the_get(ray_sim, capsys):
    """In [21]-[22]: 10 tasks that each fail half the time; the get raises RayTaskError."""
    incorrect_square = _incorrect_square()

    raised = None
    try:
        ray.get([incorrect_square.remote(x=4, prob=0.5) for _ in range(10)])
    except ray.exceptions.RayTaskError as error:
        print("At least one of the tasks failed", flush=True)
        raised = error

    assert "At least one of the tasks failed\n" in capsys.readouterr().out
    assert isinstance(raised, ray.exceptions.RayTaskError)
    assert isinstance(raised, ValueError)  # also the user's exception type
    assert "Random failure" in str(raised)


@ray.remote
class _Attempts:
    """Test helper (not in the notebook): counts how many times tasks ran."""

    def __init__(self):
        self.n = 0

    def hit(self):
        self.n += 1
        return self.n

    def count(self):
        return self.n


def test_application_error_is_not_retried_by_default(ray_sim):
    """"Below task won't be retried by default because it's an application failure"."""
    attempts = _Attempts.remote()

    @ray.remote
    def incorrect_square(x: int, prob: float, attempts) -> int:
        ray.get(attempts.hit.remote())
        if random.random() < prob:
            raise ValueError("Random failure")
        return x**2

    with pytest.raises(ValueError, match="Random failure"):
        ray.get(incorrect_square.remote(x=4, prob=1.0, attempts=attempts))
    assert ray.get(attempts.count.remote()) == 1
    assert ray.get(incorrect_square.remote(x=4, prob=0.0, attempts=attempts)) == 16


def test_retry_exceptions_with_options(ray_sim):
    """In [23]-[26]: retry on ValueError, up to 10 retries: all ten tasks return 16."""
    @ray.remote(retry_exceptions=[ValueError])
    def correct_square(x: int, prob: float) -> int:
        # Simulate potential failures
        if random.random() < prob:  # % chance of failure
            raise ValueError("Random failure")

        return x**2

    correct_square_mod = correct_square.options(
        retry_exceptions=[ValueError], max_retries=10,
    )

    outputs = None
    try:
        outputs = ray.get([correct_square_mod.remote(x=4, prob=0.5) for _ in range(10)])
    except ray.exceptions.RayTaskError:
        print("At least one of the tasks failed", flush=True)

    assert outputs == [16, 16, 16, 16, 16, 16, 16, 16, 16, 16]


def test_retry_exceptions_really_retries(ray_sim):
    """The retries behind In [26]: failed attempts are re-run (default max_retries is 3, so a task
    that always raises runs 4 times), and an exception type not listed is not retried."""
    attempts = _Attempts.remote()

    @ray.remote(retry_exceptions=[ValueError])
    def correct_square(x: int, prob: float, attempts) -> int:
        ray.get(attempts.hit.remote())
        if random.random() < prob:
            raise ValueError("Random failure")
        return x**2

    with pytest.raises(ValueError, match="Random failure"):
        ray.get(correct_square.remote(x=4, prob=1.0, attempts=attempts))
    assert ray.get(attempts.count.remote()) == 4

    # With prob=0.5 and max_retries=10 every task succeeds; some needed more than one attempt.
    before = ray.get(attempts.count.remote())
    mod = correct_square.options(retry_exceptions=[ValueError], max_retries=10)
    assert ray.get([mod.remote(x=4, prob=0.5, attempts=attempts) for _ in range(10)]) == [16] * 10
    assert ray.get(attempts.count.remote()) - before > 10

    @ray.remote(retry_exceptions=[ValueError])
    def other_error(attempts):
        ray.get(attempts.hit.remote())
        raise KeyError("not retried")

    before = ray.get(attempts.count.remote())
    with pytest.raises(KeyError):
        ray.get(other_error.remote(attempts))
    assert ray.get(attempts.count.remote()) - before == 1


def test_system_errors_are_retried_up_to_3_times(ray_sim):
    """"Ray will automatically retry a task up to 3 times, if it fails due to a system error"."""
    attempts = _Attempts.remote()

    @ray.remote
    def crashes_twice(attempts):
        if ray.get(attempts.hit.remote()) <= 2:
            os._exit(1)  # the worker process dies
        return "survived"

    assert ray.get(crashes_twice.remote(attempts)) == "survived"
    assert ray.get(attempts.count.remote()) == 3

    always = _Attempts.remote()

    @ray.remote
    def always_crashes(attempts):
        ray.get(attempts.hit.remote())
        os._exit(1)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(always_crashes.remote(always))
    assert ray.get(always.count.remote()) == 4  # 1 try + 3 retries


# ---------------------------------------------------------------------------------------------
# 4. Task Runtime Environments
# ---------------------------------------------------------------------------------------------

def test_runtime_env_env_vars(ray_sim):
    """In [27]-[28]."""
    @ray.remote(runtime_env={"env_vars": {"MY_CUSTOM_ENV": "prod"}})
    def f():
        env = os.environ["MY_CUSTOM_ENV"]
        return f"My custom env is {env}"

    assert ray.get(f.remote()) == "My custom env is prod"
    assert "MY_CUSTOM_ENV" not in os.environ  # the driver's environment is untouched


# ---------------------------------------------------------------------------------------------
# 5. Resource allocation and management
# ---------------------------------------------------------------------------------------------

def test_num_cpus_1(ray_sim):
    """In [29]."""
    @ray.remote(num_cpus=1)
    def remote_add(a, b):
        return a + b

    assert ray.get(remote_add.remote(2, 3)) == 5


def test_oversubscribing_with_omp_num_threads(ray_sim, capsys):
    """In [31], [35]: the same num_cpus=1 task with OMP_NUM_THREADS=1 and =8 in its runtime_env."""
    @ray.remote(num_cpus=1)
    def mm(n: int = 4000):
        A = np.random.rand(n, n)
        B = np.random.rand(n, n)

        # Time the dot product
        start = time.time()
        C = np.dot(A, B)
        end = time.time()
        print(f"Took {end - start}s")

    assert ray.get(mm.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}).remote()) is None
    # Keep the suite fast: the second run uses a smaller matrix (same code path).
    assert ray.get(mm.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "8"}}).remote(500)) is None
    out = capsys.readouterr().out
    assert len(re.findall(r"Took [0-9.e-]+s", out)) == 2

    # The logical num_cpus=1 does not limit the threads the task is told to use.
    @ray.remote(num_cpus=1)
    def threads():
        return os.environ["OMP_NUM_THREADS"]

    assert ray.get(threads.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}).remote()) == "1"
    assert ray.get(threads.options(runtime_env={"env_vars": {"OMP_NUM_THREADS": "8"}}).remote()) == "8"


def test_available_resources(make_cluster):
    """In [36]: a dict of CPU, memory, object_store_memory and node resources (10 CPUs, as shown)."""
    make_cluster(nodes=({"num_cpus": 10, "memory": 12612698112, "object_store_memory": 1073741824},))
    available = ray.available_resources()
    assert available["CPU"] == 10.0
    assert available["memory"] == 12612698112.0
    assert available["object_store_memory"] == 1073741824.0
    assert available["node:__internal_head__"] == 1.0
    node_keys = [k for k in available if k.startswith("node:") and k != "node:__internal_head__"]
    assert len(node_keys) == 1 and available[node_keys[0]] == 1.0
    assert "GPU" not in available or available["GPU"] == 0
    assert all(isinstance(v, float) for v in available.values())


def test_head_node_unavailable_for_compute(make_cluster):
    """Pattern: configure the head node with ``resources: {"CPU": 0}``; tasks run on workers."""
    cluster = make_cluster(nodes=({"num_cpus": 0}, {"num_cpus": 4}))

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    nodes = set(ray.get([where.remote() for _ in range(8)]))
    assert nodes == {cluster.nodes[1].node_id}


def test_fractional_resources(ray_sim):
    """In [37]-[39]."""
    @ray.remote(num_cpus=0.5)
    def remote_add(a, b):
        return a + b

    ref = remote_add.remote(2, 3)
    assert isinstance(ref, ObjectRef) and repr(ref).startswith("ObjectRef(")
    assert ray.get(ref) == 5


def test_fractional_and_zero_cpu_oversubscribe(ray_sim):
    """5.2/5.3: num_cpus=0.5 fits two tasks per CPU; num_cpus=0 tasks are all scheduled at once."""
    @ray.remote(num_cpus=0.5)
    def half(i):
        time.sleep(1)
        return i

    start = time.time()
    assert ray.get([half.remote(i) for i in range(8)]) == list(range(8))
    assert 1.0 <= time.time() - start < 1.5  # 8 x 0.5 CPU on 4 CPUs: one wave

    @ray.remote(num_cpus=0)
    def io_bound(i):
        time.sleep(1)
        return i

    start = time.time()
    assert ray.get([io_bound.remote(i) for i in range(20)]) == list(range(20))
    assert 1.0 <= time.time() - start < 1.5  # 20 tasks on 4 CPUs, all concurrently


# ---------------------------------------------------------------------------------------------
# 6. Nested Tasks
# ---------------------------------------------------------------------------------------------

def _nested_main():
    @ray.remote
    def expensive_square(x):
        time.sleep(5)
        return x**2

    @ray.remote(num_cpus=0.5)
    def remote_add(a, b):
        return a + b

    @ray.remote
    def main():
        square_ref_1 = expensive_square.remote(1)
        square_ref_2 = expensive_square.remote(2)
        add_ref = remote_add.remote(square_ref_1, square_ref_2)
        return ray.get(add_ref)

    return main


def test_nested_tasks(ray_sim):
    """In [40]-[41]: 1**2 + 2**2; the two 5 s squares run in parallel."""
    main = _nested_main()
    start = time.time()
    assert ray.get(main.remote()) == 5
    assert 5 <= time.time() - start < 6


def test_nested_tasks_yield_cpu_while_blocked(make_cluster):
    """"To avoid deadlocks, Ray yields CPU resources while blocked": on a 1-CPU cluster main's
    CPU is lent to its sub-tasks while it waits in ray.get."""
    make_cluster(nodes=({"num_cpus": 1},))
    main = _nested_main()
    start = time.time()
    assert ray.get(main.remote()) == 5
    assert 10 <= time.time() - start < 11  # the two squares take turns on the one CPU


# ---------------------------------------------------------------------------------------------
# 7. Pattern: Pipeline data processing and waiting for results
# ---------------------------------------------------------------------------------------------

def _random_expensive_square():
    @ray.remote
    def expensive_square(x):
        time.sleep(np.random.randint(1, 10))
        return x**2

    return expensive_square


def test_pipeline_process_items_as_they_become_available(ray_sim, capsys):
    """In [7]-[9]: 15 tasks sleeping 1-9 s on 4 CPUs; process each result as soon as it is ready."""
    expensive_square = _random_expensive_square()
    start = time.time()

    expensive_compute = []

    for i in range(15):
        expensive_compute.append(expensive_square.remote(i))

    assert len(expensive_compute) == 15 and all(isinstance(r, ObjectRef) for r in expensive_compute)
    processed = []  # (input index, result, virtual seconds) - test bookkeeping

    ready_refs, not_ready_refs = ray.wait(expensive_compute)  # wait for next object ref that is ready
    first_ready_at = time.time() - start

    # process new item as soon as it becomes available
    while not_ready_refs:
        print(f"{ready_refs[0]} is ready; result: {ray.get(ready_refs[0])}")
        print(f"{len(not_ready_refs)} items not ready... \n")
        processed.append((expensive_compute.index(ready_refs[0]), ray.get(ready_refs[0]), time.time() - start))

        ready_refs, not_ready_refs = ray.wait(not_ready_refs)  # wait for next item

        assert len(ready_refs) == 1, f"len(ready_refs) should be 1, got {len(ready_refs)} instead"

    print(f"I'm the last item: {ready_refs[0]}; result: {ray.get(ready_refs[0])}")
    processed.append((expensive_compute.index(ready_refs[0]), ray.get(ready_refs[0]), time.time() - start))

    out = capsys.readouterr().out
    counts = [int(n) for n in re.findall(r"(\d+) items not ready", out)]
    assert counts == list(range(14, 0, -1))
    assert out.count("is ready; result:") == 14
    assert out.count("I'm the last item:") == 1

    # Every task processed exactly once, each with its own square.
    assert sorted(i for i, _, _ in processed) == list(range(15))
    assert all(result == i**2 for i, result, _ in processed)

    # Virtual time: the first result is processed while others still run (no task sleeps over
    # 9 s), results come in completion order, and 15 tasks of 1-9 s on 4 CPUs take between 4 s
    # (one CPU runs >= 4 tasks of >= 1 s) and 15*9/4 + 9 s (greedy list-scheduling bound).
    total = processed[-1][2]
    assert first_ready_at <= 9.5
    assert first_ready_at < total
    times = [t for _, _, t in processed]
    assert times == sorted(times)
    assert 4 <= total <= 15 * 9 / 4 + 9 + 0.5


def test_batch_processing_pattern(ray_sim, capsys):
    """In [10]-[11]: wait for BATCH_SIZE refs at a time; each batch is in input order."""
    expensive_square = _random_expensive_square()

    expensive_compute = []

    for i in range(15):
        expensive_compute.append(expensive_square.remote(i))

    batches = []  # test bookkeeping: input indices of each batch
    BATCH_SIZE = 3

    ready_refs, not_ready_refs = ray.wait(expensive_compute, num_returns=BATCH_SIZE)  # wait for BATCH_SIZE object refs

    # process new item as soon as it becomes available
    while not_ready_refs:
        print(f"{ready_refs} are ready; results: {ray.get(ready_refs)}")
        print(f"{len(not_ready_refs)} items not ready... \n")
        batches.append(([expensive_compute.index(r) for r in ready_refs], ray.get(ready_refs)))
        ready_refs, not_ready_refs = ray.wait(not_ready_refs, num_returns=BATCH_SIZE)  # wait for BATCH_SIZE object refs

    print(f"Last batch {ready_refs}; result: {ray.get(ready_refs)}")
    batches.append(([expensive_compute.index(r) for r in ready_refs], ray.get(ready_refs)))

    out = capsys.readouterr().out
    assert [int(n) for n in re.findall(r"(\d+) items not ready", out)] == [12, 9, 6, 3]
    assert out.count("Last batch [ObjectRef(") == 1

    assert len(batches) == 5
    for indices, results in batches:
        assert len(indices) == BATCH_SIZE
        assert indices == sorted(indices)  # ready refs come back in input order
        assert results == [i**2 for i in indices]
    assert sorted(i for indices, _ in batches for i in indices) == list(range(15))


def test_fetching_too_many_objects_at_once_smaller_scale(ray_sim):
    """7.2: the anti-pattern, at 2,000 tasks instead of 1,000,000 (which is the point of the
    warning: at that scale it exhausts memory; here it must simply work), then the recommended
    batch-at-a-time fetching of the same refs."""
    expensive_square = _random_expensive_square()
    n = 2_000

    object_refs = [expensive_square.remote(i) for i in range(n)]

    all_results_at_once = ray.get(object_refs)
    assert all_results_at_once == [i**2 for i in range(n)]

    # Instead fetch and process one batch at a time.
    results = {}
    not_ready = object_refs
    while not_ready:
        ready, not_ready = ray.wait(not_ready, num_returns=min(100, len(not_ready)))
        for ref, value in zip(ready, ray.get(ready)):
            results[ref] = value
    assert [results[ref] for ref in object_refs] == all_results_at_once


# ---------------------------------------------------------------------------------------------
# 8. Ray Actors
# ---------------------------------------------------------------------------------------------

def test_accounting_actor(ray_sim):
    """In [12]-[18]. ``self.total = 0`` shadows the method ``total`` on the instance; as in Ray, the
    actor method ``total`` is the class's function, which returns the attribute."""
    @ray.remote
    class Accounting:
        def __init__(self):
            self.total = 0

        def add(self, amount):
            self.total += amount

        def remove(self, amount):
            self.total -= amount

        def total(self):
            return self.total

    acc = Accounting.remote()

    ref = acc.total.remote()
    assert isinstance(ref, ObjectRef)

    assert ray.get(acc.total.remote()) == 0

    add_ref = acc.add.remote(100)
    assert isinstance(add_ref, ObjectRef)

    remove_ref = acc.remove.remote(10)
    assert isinstance(remove_ref, ObjectRef)

    assert ray.get(acc.total.remote()) == 90
    assert ray.get([add_ref, remove_ref]) == [None, None]


def test_linear_model_actor(ray_sim):
    """In [20] (the activity and its solution): 100 Celsius is 212.0 Fahrenheit."""
    @ray.remote
    class LinearModel:
        def __init__(self, w0, w1):
            self.w0 = w0
            self.w1 = w1

        def convert(self, celsius):
            # Hint: convert the celsius temperature to Fahrenheit
            return self.w1 * celsius + self.w0

    model = LinearModel.remote(w1=9/5, w0=32)
    result = ray.get(model.convert.remote(100))
    assert result == 212.0
    assert repr(result) == "212.0"
