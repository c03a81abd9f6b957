"""End-to-end checks of the borrower protocol and nested references (RC1), on the sim transport.

These mirror engine tests in tests/engine/test_core_worker.py through the public API:
an object must stay alive while a borrower holds it, and must be freed once nothing does.
"""
from __future__ import annotations

import gc

import numpy as np

import rayref
from sim import Cluster, SimConfig


def _cluster() -> Cluster:
    cluster = Cluster(seed=0, sim=SimConfig(validate=True))
    cluster.add_node(num_cpus=2, memory=10**9, object_store_memory=10**9)
    cluster.connect()
    return cluster


def test_actor_keeping_a_nested_ref_past_its_call_can_still_read_it():
    """RC1, BOR1 / borrower way 1: the actor still holds the ref when it replies, so the owner must
    register it as borrower before the task's own hold on the argument ends."""
    _cluster()
    try:
        @rayref.remote
        class Keeper:
            def __init__(self):
                self.kept = None

            def keep(self, refs):
                self.kept = refs
                return True

            def read(self):
                return float(rayref.get(self.kept[0]).sum())

        keeper = Keeper.remote()
        ref = rayref.put(np.ones(1_000_000))
        done = keeper.keep.remote([ref])
        del ref
        gc.collect()
        assert rayref.get(done) is True
        assert rayref.get(keeper.read.remote()) == 1_000_000.0
    finally:
        rayref.shutdown()


def test_object_nested_in_a_put_is_freed_with_the_outer_object():
    """RC1, LIFE1: without leaks, once neither the inner nor the outer ref is held, the inner object
    leaves the node's store."""
    cluster = _cluster()
    try:
        store = cluster.runtime.node_managers["node-0001"].store
        inner = rayref.put(np.ones(1_000_000))
        inner_id = inner.hex()
        outer = rayref.put([inner])
        assert rayref.get(rayref.get(outer)[0]).shape == (1_000_000,)
        cluster.settle()
        assert inner_id in store
        del inner, outer
        gc.collect()
        rayref.get(rayref.put(0))  # any call into the engine applies the pending releases
        cluster.settle()
        assert inner_id not in store, "the inner object leaked: nothing holds it any more"
        cluster.validate()
    finally:
        rayref.shutdown()
