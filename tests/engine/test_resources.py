"""Resources (fixed point, four decimals) and GpuInstances (rayref/core/resources.py)."""
from __future__ import annotations

import pickle

from hypothesis import given, settings, strategies as st

from rayref.core.resources import SCALE, GpuInstances, Resources, to_fixed


def test_ten_tenth_cpus_give_back_exactly_one():
    tenth = Resources({"CPU": 0.1})
    total = Resources()
    for _ in range(10):
        total = total + tenth
    assert total == Resources({"CPU": 1})
    assert total.get("CPU") == 1.0 and total.raw("CPU") == SCALE
    left = Resources({"CPU": 1})
    for _ in range(10):
        assert tenth.fits_in(left)
        left = left - tenth
    assert left.is_empty() and left == Resources()
    assert not tenth.fits_in(left)


def test_fixed_point_avoids_float_drift():
    assert 0.1 + 0.2 != 0.3
    assert Resources({"CPU": 0.1}) + Resources({"CPU": 0.2}) == Resources({"CPU": 0.3})
    assert to_fixed(0.1 + 0.2) == to_fixed(0.3) == 3000
    third = Resources({"GPU": 1 / 3})
    assert third.raw("GPU") == 3333


def test_zero_amounts_are_dropped_and_equal_bags_hash_equal():
    a = Resources({"CPU": 2, "GPU": 0, "Custom": 1})
    b = Resources({"Custom": 1.0, "CPU": 2.0})
    assert a == b and hash(a) == hash(b)
    assert list(a.names()) == ["CPU", "Custom"]
    assert a.to_dict() == {"CPU": 2.0, "Custom": 1.0}
    assert {a: "x"}[b] == "x"
    assert (a - a).is_empty()


def test_fits_in_needs_every_named_amount():
    have = Resources({"CPU": 2, "GPU": 1})
    assert Resources({"CPU": 2}).fits_in(have)
    assert Resources().fits_in(Resources())
    assert not Resources({"CPU": 2.0001}).fits_in(have)
    assert not Resources({"TPU": 1}).fits_in(have)
    assert not Resources({"CPU": 1, "GPU": 2}).fits_in(have)


def test_subtraction_may_go_negative_for_overcommit():
    assert (Resources({"CPU": 1}) - Resources({"CPU": 2})).get("CPU") == -1
    assert not Resources({"CPU": 0.5}).fits_in(Resources({"CPU": 1}) - Resources({"CPU": 2}))


def test_only_and_pickle_round_trip():
    r = Resources({"CPU": 1.5, "GPU": 0.25, "memory": 100})
    assert r.only(("CPU",)) == Resources({"CPU": 1.5})
    assert pickle.loads(pickle.dumps(r)) == r


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_adding_then_subtracting_any_tenths_is_exact(tenths):
    """Any sequence of allocations in tenths of a CPU, released in any order, gives back the total."""
    total = Resources({"CPU": sum(tenths) / 10})
    parts = [Resources({"CPU": t / 10}) for t in tenths]
    left = total
    for part in parts:
        assert part.fits_in(left)
        left = left - part
    assert left.is_empty()
    for part in reversed(parts):
        left = left + part
    assert left == total


# ------------------------------------------------------------------ GPU instances


def test_gpu_fractions_first_fit_by_index():
    gpus = GpuInstances(2)
    assert gpus.allocate(to_fixed(0.5)) == (0,)
    assert gpus.allocate(to_fixed(0.25)) == (0,)
    assert gpus.allocate(to_fixed(0.5)) == (1,)  # 0.25 left on GPU 0
    assert gpus.allocate(to_fixed(0.25)) == (0,)
    assert gpus.free == [0, to_fixed(0.5)]
    assert gpus.allocate(to_fixed(0.75)) is None
    gpus.release((0,), to_fixed(0.5))
    assert gpus.free == [to_fixed(0.5), to_fixed(0.5)]


def test_whole_gpus_take_fully_free_indices_and_release_restores_them():
    gpus = GpuInstances(4)
    assert gpus.allocate(to_fixed(0.1)) == (0,)
    assert gpus.allocate(to_fixed(2)) == (1, 2)
    assert gpus.allocate(to_fixed(2)) is None  # only GPU 3 is whole
    assert gpus.allocate(to_fixed(1)) == (3,)
    gpus.release((1, 2), to_fixed(2))
    assert gpus.free == [SCALE - to_fixed(0.1), SCALE, SCALE, 0]
    assert gpus.total_free() == 3 * SCALE - to_fixed(0.1)
    assert gpus.allocate(0) == ()


def test_ten_tenth_gpus_fill_exactly_one_gpu():
    gpus = GpuInstances(2)
    ids = [gpus.allocate(to_fixed(0.1)) for _ in range(10)]
    assert ids == [(0,)] * 10
    assert gpus.free == [0, SCALE]
    assert gpus.allocate(to_fixed(0.1)) == (1,)
    for _ in range(10):
        gpus.release((0,), to_fixed(0.1))
    assert gpus.free[0] == SCALE
