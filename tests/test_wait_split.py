"""``wait()``'s split of its refs into (ready, not ready) keeps input order, for few and for many ready."""
from hypothesis import given, strategies as st

from rayref.api import _split


@given(st.integers(min_value=1, max_value=60).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(min_value=0, max_value=n - 1)))))
def test_split_is_the_ordered_partition(case):
    n, ready_positions = case
    refs = [f"ref{i}" for i in range(n)]
    ids = tuple(f"id{i}" for i in range(n))
    ready_ids = [ids[i] for i in sorted(ready_positions)]
    ready, not_ready = _split(refs, ids, ready_ids)
    assert ready == [refs[i] for i in sorted(ready_positions)]
    assert not_ready == [refs[i] for i in range(n) if i not in ready_positions]
