"""Tasks: submission, arguments, returns, options. Runs unchanged on every transport."""
import os

import numpy as np
import pytest


def test_task_returns_value(ray_start):
    ray = ray_start

    @ray.remote
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(8)]) == [i * i for i in range(8)]


def test_kwargs_and_defaults(ray_start):
    ray = ray_start

    @ray.remote
    def f(a, b=2, *, c=3):
        return (a, b, c)

    assert ray.get(f.remote(1, c=5)) == (1, 2, 5)


def test_top_level_ref_is_resolved_nested_stays_ref(ray_start):
    ray = ray_start

    @ray.remote
    def ident(x):
        return x

    ref = ray.put(41)
    assert ray.get(ident.remote(ref)) == 41
    nested = ray.get(ident.remote([ref]))
    assert isinstance(nested[0], ray.ObjectRef) and ray.get(nested[0]) == 41


def test_chained_tasks(ray_start):
    ray = ray_start

    @ray.remote
    def add(a, b):
        return a + b

    ref = add.remote(1, 2)
    for _ in range(10):
        ref = add.remote(ref, 1)
    assert ray.get(ref) == 13


def test_num_returns(ray_start):
    ray = ray_start

    @ray.remote(num_returns=3)
    def three():
        return 1, 2, 3

    a, b, c = three.remote()
    assert ray.get([c, b, a]) == [3, 2, 1]


def test_wrong_number_of_returns_is_a_task_error(ray_start):
    ray = ray_start

    @ray.remote(num_returns=2)
    def one():
        return 1

    a, _ = one.remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(a)


def test_nested_tasks_do_not_deadlock(ray_start):
    """A task blocked in get gives its CPU back, so 4 CPUs run 8 nested levels."""
    ray = ray_start

    @ray.remote
    def depth(n):
        return 0 if n == 0 else 1 + ray.get(depth.remote(n - 1))

    assert ray.get(depth.remote(8)) == 8


def test_task_exception_is_both_ray_task_error_and_cause(ray_start):
    ray = ray_start

    class MyError(Exception):
        pass

    @ray.remote
    def fail():
        raise MyError("boom")

    with pytest.raises(MyError, match="boom") as info:
        ray.get(fail.remote())
    assert isinstance(info.value, ray.exceptions.RayTaskError)


def test_error_propagates_to_dependents(ray_start):
    ray = ray_start

    @ray.remote
    def fail():
        raise ZeroDivisionError("x")

    @ray.remote
    def use(x):
        return x

    with pytest.raises(ZeroDivisionError):
        ray.get(use.remote(fail.remote()))


def _counter(ray):
    """An actor counting calls to bump(): how often a task body ran."""
    @ray.remote
    class Tries:
        def __init__(self):
            self.n = 0

        def bump(self):
            self.n += 1
            return self.n

    return Tries.remote()


def test_retry_exceptions_listed(ray_start):
    """RETRY1: an application error listed in retry_exceptions is retried."""
    ray = ray_start

    tries = _counter(ray)

    @ray.remote(retry_exceptions=[KeyError], max_retries=5)
    def flaky(counter):
        if ray.get(counter.bump.remote()) < 3:
            raise KeyError("again")
        return "ok"

    assert ray.get(flaky.remote(tries)) == "ok"
    assert ray.get(tries.bump.remote()) == 4


def test_application_errors_not_retried_by_default(ray_start):
    """RETRY1: application errors are not retried unless listed in retry_exceptions."""
    ray = ray_start

    tries = _counter(ray)

    @ray.remote
    def fails(counter):
        ray.get(counter.bump.remote())
        raise ValueError("no retry")

    with pytest.raises(ValueError):
        ray.get(fails.remote(tries))
    assert ray.get(tries.bump.remote()) == 2


def test_runtime_env_vars_are_task_local(ray_start):
    """P-CMD-5: a task sees its own runtime_env env vars, and only its own."""
    ray = ray_start

    @ray.remote(runtime_env={"env_vars": {"RAYREF_TEST_VAR": "on"}})
    def with_env():
        return os.environ.get("RAYREF_TEST_VAR")

    @ray.remote
    def without_env():
        return os.environ.get("RAYREF_TEST_VAR")

    assert ray.get(with_env.remote()) == "on"
    assert ray.get(without_env.remote()) is None
    assert ray.get(with_env.options(runtime_env={"env_vars": {"RAYREF_TEST_VAR": "x"}}).remote()) == "x"


def test_gpu_ids_and_cuda_visible_devices(ray_start):
    """P-CMD-5: a GPU task sees its GPU ids in get_gpu_ids() and CUDA_VISIBLE_DEVICES."""
    ray = ray_start

    @ray.remote(num_gpus=1)
    def gpu():
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    ids, visible = ray.get(gpu.remote())
    assert len(ids) == 1 and visible == str(ids[0])

    @ray.remote(num_gpus=0.5)
    def half():
        return ray.get_gpu_ids()

    assert all(len(x) == 1 for x in ray.get([half.remote() for _ in range(4)]))


def test_custom_and_fractional_resources(ray_start):
    ray = ray_start

    @ray.remote(resources={"Custom": 1}, num_cpus=0.5)
    def custom():
        return ray.get_runtime_context().get_assigned_resources()

    got = ray.get(custom.remote())
    assert got["Custom"] == 1.0 and got["CPU"] == 0.5


def test_large_argument_is_put_automatically(ray_start):
    ray = ray_start

    @ray.remote
    def total(a):
        return float(a.sum()), a.flags.writeable

    array = np.ones(1_000_000)
    assert ray.get(total.remote(array)) == (1_000_000.0, False)


def test_get_numpy_is_read_only_and_a_copy(ray_start):
    ray = ray_start
    array = np.arange(100_000)
    out = ray.get(ray.put(array))
    assert np.array_equal(out, array) and out is not array
    with pytest.raises(ValueError):
        out[0] = 1


def test_get_runtime_context_ids(ray_start):
    ray = ray_start

    @ray.remote
    def where():
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_task_id(), ctx.get_worker_id()

    node_id, task_id, worker_id = ray.get(where.remote())
    assert node_id in [n["NodeID"] for n in ray.nodes()]
    assert task_id and worker_id != ray.get_runtime_context().get_worker_id()


def test_child_tasks_inherit_runtime_env_and_namespace(ray_start):
    """A task's children see its runtime_env variables and its job's namespace (as in Ray)."""
    ray = ray_start

    @ray.remote
    class Named:
        def hello(self):
            return "hi"

    keep = Named.options(name="visible-from-tasks").remote()
    assert ray.get(keep.hello.remote()) == "hi"

    @ray.remote
    def child():
        return os.environ.get("RAYREF_INHERITED"), ray.get(ray.get_actor("visible-from-tasks").hello.remote())

    @ray.remote(runtime_env={"env_vars": {"RAYREF_INHERITED": "yes"}})
    def parent():
        return ray.get(child.remote())

    assert ray.get(parent.remote()) == ("yes", "hi")
