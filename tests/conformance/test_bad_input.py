"""Misuse of the API gets a clear error that names the fix, never a hang or a wrong answer."""
import threading

import pytest


def test_calling_remote_function_directly(ray_start):
    ray = ray_start

    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError, match=r"f.remote\(\)"):
        f()


def test_instantiating_actor_directly(ray_start):
    ray = ray_start

    @ray.remote
    class A:
        pass

    with pytest.raises(TypeError, match=r"A.remote\(\)"):
        A()


@pytest.mark.parametrize("options, error, text", [
    ({"num_cpu": 1}, ValueError, "Invalid option keyword 'num_cpu'"),
    ({"num_cpus": -1}, ValueError, "num_cpus"),
    ({"num_cpus": "two"}, TypeError, "num_cpus"),
    ({"max_retries": True}, TypeError, "max_retries"),
    ({"resources": {"CPU": 1}}, ValueError, "num_cpus"),
    ({"num_gpus": 1.5}, ValueError, "whole number"),
    ({"scheduling_strategy": "NEAREST"}, ValueError, "scheduling_strategy"),
    ({"runtime_env": {"pip": ["x"]}}, ValueError, "env_vars"),
])
def test_bad_task_options(ray_start, options, error, text):
    ray = ray_start
    with pytest.raises(error, match=text):
        ray.remote(**options)(lambda: 1).remote()


def test_bad_actor_options(ray_start):
    ray = ray_start
    with pytest.raises(ValueError, match="Invalid option keyword 'max_retries' for actors"):
        @ray.remote(max_retries=1)
        class A:
            pass
    with pytest.raises(ValueError, match="lifetime"):
        @ray.remote(lifetime="forever")
        class B:
            pass


def test_remote_decorator_misuse(ray_start):
    ray = ray_start
    with pytest.raises(TypeError, match="keyword options"):
        ray.remote(1, 2)


def test_get_of_non_ref(ray_start):
    ray = ray_start
    with pytest.raises(ValueError, match="must be an ObjectRef or a list of ObjectRefs"):
        ray.get(42)
    with pytest.raises(ValueError, match="containing int"):
        ray.get([ray.put(1), 2])


def test_wait_with_duplicates_or_bad_num_returns(ray_start):
    ray = ray_start
    ref = ray.put(1)
    with pytest.raises(ValueError, match="unique"):
        ray.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait([ref], num_returns=2)


def test_unserializable_argument(ray_start):
    ray = ray_start

    @ray.remote
    def f(x):
        return x

    with pytest.raises(TypeError, match=r"Could not pass an argument to .*f: .*lock"):
        f.remote(threading.Lock())
    with pytest.raises(TypeError, match="put\\(\\) failed"):
        ray.put(threading.Lock())


def test_unserializable_return_is_task_error(ray_start):
    ray = ray_start

    @ray.remote
    def f():
        return threading.Lock()

    with pytest.raises(TypeError, match="Could not store the return value"):
        ray.get(f.remote())


def test_put_of_object_ref(ray_start):
    ray = ray_start
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.put(ray.put(1))


def test_kill_and_cancel_of_wrong_things(ray_start):
    ray = ray_start
    with pytest.raises(ValueError, match="only supports actors"):
        ray.kill(ray.put(1))
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.cancel("not a ref")

    @ray.remote
    class A:
        def f(self):
            return 1

    a = A.remote()
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        ray.cancel(a.f.remote(), force=True)
    with pytest.raises(AttributeError, match="has no method 'g'"):
        a.g.remote()


def test_init_twice(ray_start):
    ray = ray_start
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        ray.init()
    assert ray.init(ignore_reinit_error=True)["transport"]


def test_unknown_init_argument():
    import rayref
    with pytest.raises(TypeError, match="num_cpu"):
        rayref.init(num_cpu=2)
    assert not rayref.is_initialized()
