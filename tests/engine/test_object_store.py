"""ObjectStore (rayref/core/object_store.py): bytes accounting, LRU eviction of secondary
copies, spilling of pinned primaries.

OS1: ``used`` equals the bytes of the in-memory (unspilled) entries.
OS2: ``used <= capacity`` after every operation.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from rayref.core import protocol as p
from rayref.core.object_store import ObjectStore


def blob(n: int) -> p.Blob:
    return p.Blob(data=b"", nbytes=n)


def in_memory(store: ObjectStore) -> set[str]:
    return {oid for oid, e in store.objects.items() if not e.spilled}


def test_add_and_remove_account_bytes():
    """OS1: used follows adds and removes."""
    store = ObjectStore(100)
    store.add("a", blob(30), owner="o", pinned=True)
    store.add("b", blob(50), owner="o", pinned=False)
    assert store.used == 80 and store.spilled_bytes == 0
    store.validate()
    store.remove("a")
    assert store.used == 50 and "a" not in store
    store.remove("a")  # removing twice is harmless
    assert store.used == 50
    store.validate()


def test_adding_an_existing_object_does_not_double_count_but_can_pin_it():
    store = ObjectStore(100)
    store.add("a", blob(30), owner="", pinned=False)
    store.add("a", blob(30), owner="o", pinned=True)
    assert store.used == 30 and store.objects["a"].pinned
    store.validate()


def test_secondary_copies_are_evicted_least_recently_used_first():
    """OS2: room is made by evicting unpinned copies, oldest use first (get refreshes)."""
    store = ObjectStore(100)
    store.add("a", blob(40), owner="", pinned=False)
    store.add("b", blob(40), owner="", pinned=False)
    assert store.get("a") is not None  # a is now more recent than b
    store.add("c", blob(40), owner="", pinned=False)
    assert set(store.objects) == {"a", "c"}
    assert store.used == 80 and store.spilled_bytes == 0
    store.validate()


def test_secondary_copies_go_before_any_primary_is_spilled():
    store = ObjectStore(100)
    store.add("p1", blob(40), owner="o", pinned=True)  # oldest, but pinned
    store.add("s1", blob(40), owner="", pinned=False)
    store.add("p2", blob(40), owner="o", pinned=True)
    assert "s1" not in store
    assert in_memory(store) == {"p1", "p2"} and store.spilled_bytes == 0
    store.validate()


def test_pinned_objects_are_spilled_oldest_first_and_stay_readable():
    store = ObjectStore(100)
    store.add("p1", blob(60), owner="o", pinned=True)
    store.add("p2", blob(30), owner="o", pinned=True)
    store.add("p3", blob(60), owner="o", pinned=True)
    assert store.objects["p1"].spilled and not store.objects["p2"].spilled and not store.objects["p3"].spilled
    assert store.used == 90 and store.spilled_bytes == 60
    assert store.get("p1") == blob(60)  # spilled objects are still readable
    store.validate()
    store.remove("p1")
    assert store.spilled_bytes == 0 and store.used == 90
    store.validate()


def test_an_object_larger_than_the_store_is_spilled_on_arrival():
    store = ObjectStore(100)
    store.add("small", blob(10), owner="", pinned=False)
    store.add("huge", blob(500), owner="o", pinned=True)
    assert store.objects["huge"].spilled
    assert store.spilled_bytes == 500 and store.used <= 100
    store.validate()


def test_validate_catches_accounting_drift():
    """OS1: validate() fails on a store whose used bytes drift from its entries."""
    store = ObjectStore(100)
    store.add("a", blob(10), owner="o", pinned=True)
    store.used += 1
    with pytest.raises(AssertionError, match="OS1"):
        store.validate()
    store.used -= 1
    store.validate()


ops = st.lists(st.tuples(st.sampled_from(["add", "get", "remove"]), st.integers(0, 7),
                         st.integers(1, 120), st.booleans()), max_size=60)


@settings(max_examples=60)
@given(st.integers(50, 300), ops)
def test_random_operations_keep_os1_and_os2(capacity, operations):
    """OS1/OS2 after every operation; primaries are never lost (evicted), only spilled."""
    store = ObjectStore(capacity)
    primaries = set()
    for op, index, size, pinned in operations:
        oid = f"o{index}"
        if op == "add":
            known = oid in store
            store.add(oid, blob(size), owner="o", pinned=pinned)
            if pinned:
                primaries.add(oid)
            elif not known and oid in primaries:
                primaries.discard(oid)
        elif op == "get":
            store.get(oid)
        else:
            store.remove(oid)
            primaries.discard(oid)
        store.validate()
        assert store.used <= capacity
        assert primaries <= set(store.objects), "a pinned primary was evicted"
        assert store.spilled_bytes == sum(e.blob.nbytes for e in store.objects.values() if e.spilled)
