"""ObjectStore (rayref/core/object_store.py): bytes accounting, LRU eviction of secondary
copies, spilling of pinned primaries, copies remembered to be freed with their primary.

OS1: ``used`` equals the bytes of the in-memory (unspilled) entries.
OS2: ``used <= capacity`` after every operation.
OS3: only pinned entries are spilled.
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
    """add returns what it spilled, for the node manager to tell its transport (SpillObject)."""
    store = ObjectStore(100)
    assert store.add("p1", blob(60), owner="o", pinned=True) == []
    assert store.add("p2", blob(30), owner="o", pinned=True) == []
    assert store.add("p3", blob(60), owner="o", pinned=True) == ["p1"]
    assert store.objects["p1"].spilled and not store.objects["p2"].spilled and not store.objects["p3"].spilled
    assert store.used == 90 and store.spilled_bytes == 60
    assert store.get("p1") == blob(60)  # spilled objects are still readable
    store.validate()
    store.remove("p1")
    assert store.spilled_bytes == 0 and store.used == 90
    store.validate()


def test_an_object_larger_than_the_store_is_spilled_on_arrival():
    """As Ray's fallback allocation: it goes straight to disk, evicting and spilling nothing else."""
    store = ObjectStore(100)
    store.add("small", blob(10), owner="", pinned=False)
    assert store.add("huge", blob(500), owner="o", pinned=True) == ["huge"]
    assert store.objects["huge"].spilled and "small" in store
    assert store.spilled_bytes == 500 and store.used == 10
    store.validate()


def test_a_secondary_copy_that_cannot_fit_is_not_kept_and_spills_nothing():
    """OS3: room for a secondary copy is made by evicting other copies only, never by spilling."""
    store = ObjectStore(100)
    store.add("p1", blob(70), owner="o", pinned=True)
    store.add("s1", blob(20), owner="", pinned=False)
    assert store.add("s2", blob(40), owner="", pinned=False) == []
    assert set(store.objects) == {"p1"} and store.spilled_bytes == 0
    assert store.add("s3", blob(500), owner="", pinned=False) == [] and "s3" not in store
    store.validate()


def test_spilled_blob_is_replaced_by_the_transports_and_copies_are_remembered():
    store = ObjectStore(100)
    store.add("p1", blob(60), owner="o", pinned=True)
    store.replace_spilled("p1", p.Blob(data=b"disk", nbytes=60))  # not spilled: ignored
    assert store.objects["p1"].blob == blob(60)
    store.add("p2", blob(60), owner="o", pinned=True)
    store.replace_spilled("p1", p.Blob(data=b"disk", nbytes=60))
    assert store.get("p1").data == b"disk"
    store.note_copy("p2", "node-2")
    store.note_copy("p2", "node-2")
    store.add("s1", blob(10), owner="", pinned=False)
    store.note_copy("s1", "node-3")  # only a primary's copies are remembered
    assert store.remove("p2").copies == ["node-2"] and store.objects["s1"].copies == []
    assert store.remove("p2") is None
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
    store.add("s", blob(10), owner="", pinned=False)
    store.objects["s"].spilled, store.used, store.spilled_bytes = True, 10, 10
    with pytest.raises(AssertionError, match="OS3"):
        store.validate()


ops = st.lists(st.tuples(st.sampled_from(["add", "get", "remove"]), st.integers(0, 7),
                         st.integers(1, 120), st.booleans()), max_size=60)


@settings(max_examples=60)
@given(st.integers(50, 300), ops)
def test_random_operations_keep_os1_and_os2(capacity, operations):
    """OS1-OS3 after every operation; primaries are never lost (evicted), only spilled; add
    reports exactly what it spilled."""
    store = ObjectStore(capacity)
    primaries = set()
    for op, index, size, pinned in operations:
        oid = f"o{index}"
        if op == "add":
            known = oid in store
            was_spilled = {o for o, e in store.objects.items() if e.spilled}
            spilled = store.add(oid, blob(size), owner="o", pinned=pinned)
            now_spilled = {o for o, e in store.objects.items() if e.spilled}
            assert set(spilled) == now_spilled - was_spilled and len(spilled) == len(set(spilled))
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
