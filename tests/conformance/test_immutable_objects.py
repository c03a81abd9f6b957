"""IMM1: a stored object never changes under its readers. Runs unchanged on every transport.

Whatever the caller (or a task) does to its array after ``put`` returns (after ``.remote()``
returns, after the task returned it), ``get`` sees the value as it was; arrays read back are
read-only. Sizes cover the inline path (below 100 KiB), a buffer large enough to be deferred
but still inline (80 KiB) and an object of the node's store (4 MiB).
"""
import gc
import weakref

import numpy as np
import pytest

KiB, MiB = 1024, 1024 * 1024
SIZES = [KiB, 80 * KiB, 4 * MiB]


def _read_only_copy(got, expected):
    assert np.array_equal(got, expected)
    assert not got.flags.writeable


@pytest.mark.parametrize("nbytes", SIZES)
def test_mutating_an_array_after_put_leaves_the_object_as_it_was(ray_start, nbytes):
    """IMM1: put, mutate, get -> the value at the time of the put."""
    ray = ray_start
    array = np.arange(nbytes // 8, dtype=np.int64)
    ref = ray.put(array)
    array[:] = -1
    _read_only_copy(ray.get(ref), np.arange(nbytes // 8))


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_multidimensional_array_put_keeps_its_values_and_layout(ray_start, order):
    """IMM1: a 2-D array in either memory order, mutated after the put."""
    ray = ray_start
    array = np.asarray(np.arange(512 * 1024, dtype=np.float64).reshape(1024, 512), order=order)
    expected = array.copy(order=order)
    ref = ray.put(array)
    array[:] = 0
    got = ray.get(ref)
    _read_only_copy(got, expected)
    assert got.flags.f_contiguous == (order == "F")


@pytest.mark.parametrize("nbytes", SIZES)
def test_nothing_stored_keeps_the_caller_s_array_alive(ray_start, nbytes):
    """IMM1: once put returns, no object refers to the caller's memory."""
    ray = ray_start
    array = np.ones(nbytes, dtype=np.uint8)
    alive = weakref.ref(array)
    ref = ray.put(array)
    del array
    gc.collect()
    assert alive() is None
    assert int(ray.get(ref).sum()) == nbytes


@pytest.mark.parametrize("nbytes", SIZES)
def test_mutating_an_argument_after_remote_leaves_the_task_s_argument_as_it_was(ray_start, nbytes):
    """IMM1: an argument passed by value (inline or put by ``.remote()``) is the value at the call."""
    ray = ray_start

    @ray.remote
    def first_last(array):
        return int(array[0]), int(array[-1]), array.flags.writeable

    array = np.zeros(nbytes, dtype=np.uint8)
    ref = first_last.remote(array)
    array[:] = 9
    assert ray.get(ref) == (0, 0, False)


def test_a_retried_task_sees_its_argument_as_it_was_at_the_call(ray_start, tmp_path):
    """IMM1, RETRY1: the argument kept for retries does not alias the caller's array."""
    ray = ray_start
    marker = tmp_path / "failed-once"

    @ray.remote(max_retries=1, retry_exceptions=True)
    def flaky_sum(array, path):
        import os
        if not os.path.exists(path):
            open(path, "w").close()
            raise ValueError("first attempt fails")
        return int(array.sum())

    small, large = np.ones(KiB, dtype=np.uint8), np.ones(4 * MiB, dtype=np.uint8)
    refs = [flaky_sum.remote(small, str(marker) + "-small"), flaky_sum.remote(large, str(marker) + "-large")]
    small[:], large[:] = 0, 0
    assert ray.get(refs) == [KiB, 4 * MiB]


@pytest.mark.parametrize("nbytes", SIZES)
def test_an_actor_that_mutates_the_array_it_returned_does_not_change_the_result(ray_start, nbytes):
    """IMM1: a task's return value is the value at the return, whatever the task does next."""
    ray = ray_start

    @ray.remote
    class Holder:
        def __init__(self, n):
            self.array = np.zeros(n, dtype=np.uint8)

        def get(self):
            return self.array

        def bump(self):
            self.array += 1
            return int(self.array[0])

    holder = Holder.remote(nbytes)
    first = holder.get.remote()
    assert ray.get(holder.bump.remote()) == 1
    second = holder.get.remote()
    assert ray.get(holder.bump.remote()) == 2
    _read_only_copy(ray.get(first), np.zeros(nbytes, dtype=np.uint8))
    _read_only_copy(ray.get(second), np.ones(nbytes, dtype=np.uint8))
