"""Scheduling policies (rayref/core/scheduling.py): pure functions of request, strategy, nodes and rng.

Hybrid (Ray's default): a node whose most-used resource is below 0.5 counts as empty and the
local node wins while it is; otherwise uniform among the top-k least-used ready nodes
(k = max(1, 20% of the nodes), widened to ties with the k-th); if none is ready, queue at the
local node if it could ever run it, else at the least-used node that could. SPREAD: round
robin over the ready nodes (else the feasible ones). Node affinity: hard or soft.
"""
from __future__ import annotations

import random

from rayref.core import protocol as p
from rayref.core.resources import Resources
from rayref.core.scheduling import HybridPolicy, RandomPolicy, SpreadPolicy

from engine_helpers import node_info

CPU1 = Resources({"CPU": 1})
DEFAULT = p.SchedulingStrategy()
SPREAD = p.SchedulingStrategy(kind="SPREAD")


def cpu_nodes(*used: float, total: int = 10) -> list[p.NodeInfo]:
    """Nodes n1, n2, ... with ``total`` CPUs of which ``used[i]`` are in use."""
    return [node_info(f"n{i + 1}", {"CPU": total}, {"CPU": total - u}) for i, u in enumerate(used)]


def picks(policy, request, strategy, local, nodes, draws: int = 300, seed: int = 0) -> set[str]:
    rng = random.Random(seed)
    return {policy.pick(request, strategy, local, nodes, rng).node_id for _ in range(draws)}


# ------------------------------------------------------------------ hybrid


def test_hybrid_prefers_the_local_node_below_the_spread_threshold():
    nodes = cpu_nodes(4, 0, 0, 0, 0)  # local n1 is 40% used, the others are empty
    placement = HybridPolicy().pick(CPU1, DEFAULT, "n1", nodes, random.Random(0))
    assert placement.node_id == "n1" and placement.ready
    assert picks(HybridPolicy(), CPU1, DEFAULT, "n1", nodes) == {"n1"}


def test_hybrid_leaves_the_local_node_at_the_threshold_for_the_least_used():
    """Local at exactly 50% no longer counts as empty; with 5 nodes k=1: the least-used ready node."""
    nodes = cpu_nodes(5, 7, 0, 9, 8)
    assert picks(HybridPolicy(), CPU1, DEFAULT, "n1", nodes) == {"n3"}


def test_hybrid_picks_uniformly_among_the_top_k_least_used():
    """10 nodes -> k = 2: only the two least-used ready nodes are ever picked, both of them."""
    nodes = cpu_nodes(9, 6, 5.5, 8, 8, 8, 8, 8, 8, 8)
    counts = {}
    rng = random.Random(1)
    for _ in range(400):
        chosen = HybridPolicy().pick(CPU1, DEFAULT, "n1", nodes, rng)
        assert chosen.ready
        counts[chosen.node_id] = counts.get(chosen.node_id, 0) + 1
    assert set(counts) == {"n2", "n3"}
    assert min(counts.values()) > 120  # roughly uniform (expected 200 each)


def test_hybrid_top_k_is_widened_to_every_node_tied_with_the_kth():
    """All nodes below the threshold score 0 (tied): with k = 2 of 10 the pick spreads over all empties."""
    nodes = cpu_nodes(9, 0, 1, 8, 2, 8, 8, 8, 8, 4)
    assert picks(HybridPolicy(), CPU1, DEFAULT, "n1", nodes) == {"n2", "n3", "n5", "n10"}


def test_hybrid_skips_nodes_that_cannot_run_the_request_now():
    nodes = cpu_nodes(10, 10, 7)  # n1 and n2 full
    placement = HybridPolicy().pick(CPU1, DEFAULT, "n1", nodes, random.Random(0))
    assert placement.node_id == "n3" and placement.ready


def test_hybrid_queues_at_the_local_node_when_nothing_is_ready():
    nodes = cpu_nodes(10, 10, 10)
    placement = HybridPolicy().pick(CPU1, DEFAULT, "n2", nodes, random.Random(0))
    assert placement.node_id == "n2" and not placement.ready


def test_hybrid_queues_at_the_least_used_capable_node_when_local_never_could():
    nodes = [node_info("n1", {"CPU": 4}, {"CPU": 0}),
             node_info("n2", {"CPU": 4, "GPU": 2}, {"CPU": 0, "GPU": 0}),
             node_info("n3", {"CPU": 4, "GPU": 2}, {"CPU": 2, "GPU": 1})]
    placement = HybridPolicy().pick(Resources({"GPU": 2}), DEFAULT, "n1", nodes, random.Random(0))
    assert placement.node_id == "n3" and not placement.ready


def test_hybrid_infeasible_request_has_no_node_and_a_reason():
    nodes = cpu_nodes(0, 0)
    placement = HybridPolicy().pick(Resources({"GPU": 1}), DEFAULT, "n1", nodes, random.Random(0))
    assert placement.node_id == "" and not placement.ready
    assert "GPU" in placement.reason


def test_hybrid_ignores_dead_nodes():
    nodes = [node_info("n1", {"CPU": 4}, {"CPU": 0}), node_info("n2", {"CPU": 4}, alive=False),
             node_info("n3", {"CPU": 4}, {"CPU": 1})]
    assert picks(HybridPolicy(), CPU1, DEFAULT, "n1", nodes) == {"n3"}
    only_dead = [node_info("n2", {"CPU": 4}, alive=False)]
    assert HybridPolicy().pick(CPU1, DEFAULT, "n1", only_dead, random.Random(0)).node_id == ""


def test_utilization_is_the_most_used_resource_ignoring_node_labels():
    total = Resources({"CPU": 4, "GPU": 2, "node:sim-node-1": 1})
    available = Resources({"CPU": 3, "GPU": 0})
    assert available.utilization(total) == 1.0
    assert Resources({"CPU": 4, "GPU": 2}).utilization(total) == 0.0
    # a GPU-full node is not 'empty' even though its CPUs are idle
    nodes = [p.NodeInfo(node_id="n1", address="n1", total=total, available=available),
             node_info("n2", {"CPU": 4, "GPU": 2}, {"CPU": 3, "GPU": 2})]
    assert HybridPolicy().pick(CPU1, DEFAULT, "n1", nodes, random.Random(0)).node_id == "n2"


# ------------------------------------------------------------------ spread


def test_spread_round_robins_over_ready_nodes():
    policy = SpreadPolicy()
    nodes = cpu_nodes(0, 5, 9)
    order = [policy.pick(CPU1, SPREAD, "n1", nodes, random.Random(0)) for _ in range(6)]
    assert [pl.node_id for pl in order] == ["n1", "n2", "n3", "n1", "n2", "n3"]
    assert all(pl.ready for pl in order)


def test_spread_skips_busy_nodes_and_falls_back_to_feasible_ones():
    policy = SpreadPolicy()
    nodes = cpu_nodes(0, 10, 0)
    assert [policy.pick(CPU1, SPREAD, "n1", nodes, None).node_id for _ in range(4)] == ["n1", "n3", "n1", "n3"]
    full = cpu_nodes(10, 10)
    placement = SpreadPolicy().pick(CPU1, SPREAD, "n1", full, None)
    assert placement.node_id in ("n1", "n2") and not placement.ready


def test_hybrid_delegates_spread_strategy_to_round_robin():
    policy = HybridPolicy()
    nodes = cpu_nodes(0, 0, 0, 0)
    got = [policy.pick(CPU1, SPREAD, "n1", nodes, random.Random(0)).node_id for _ in range(8)]
    assert got == ["n1", "n2", "n3", "n4"] * 2


# ------------------------------------------------------------------ node affinity


def affinity(node_id: str, soft: bool = False) -> p.SchedulingStrategy:
    return p.SchedulingStrategy(kind="NODE_AFFINITY", node_id=node_id, soft=soft)


def test_hard_affinity_goes_to_its_node_even_when_busy():
    nodes = cpu_nodes(0, 10)
    placement = HybridPolicy().pick(CPU1, affinity("n2"), "n1", nodes, random.Random(0))
    assert placement.node_id == "n2" and not placement.ready
    placement = HybridPolicy().pick(CPU1, affinity("n2"), "n1", cpu_nodes(0, 3), random.Random(0))
    assert placement.node_id == "n2" and placement.ready


def test_hard_affinity_to_a_dead_or_unknown_or_too_small_node_is_infeasible():
    nodes = [node_info("n1", {"CPU": 4}), node_info("n2", {"CPU": 4}, alive=False)]
    for target, word in (("n2", "not alive"), ("n9", "not alive")):
        placement = HybridPolicy().pick(CPU1, affinity(target), "n1", nodes, random.Random(0))
        assert placement.node_id == "" and word in placement.reason
    placement = HybridPolicy().pick(Resources({"CPU": 8}), affinity("n1"), "n1", nodes, random.Random(0))
    assert placement.node_id == "" and "lacks the resources" in placement.reason


def test_soft_affinity_falls_back_to_hybrid():
    nodes = [node_info("n1", {"CPU": 4}), node_info("n2", {"CPU": 4}, alive=False)]
    placement = HybridPolicy().pick(CPU1, affinity("n2", soft=True), "n1", nodes, random.Random(0))
    assert placement.node_id == "n1" and placement.ready
    placement = HybridPolicy().pick(Resources({"CPU": 8}), affinity("n1", soft=True), "n1",
                                    nodes + [node_info("n3", {"CPU": 16})], random.Random(0))
    assert placement.node_id == "n3"


# ------------------------------------------------------------------ random


def test_random_policy_is_uniform_over_ready_nodes():
    nodes = cpu_nodes(0, 10, 9, 0)
    assert picks(RandomPolicy(), CPU1, DEFAULT, "n1", nodes) == {"n1", "n3", "n4"}


def test_policies_are_deterministic_given_the_rng_seed():
    nodes = cpu_nodes(9, 0, 1, 8, 2, 8, 8, 8, 8, 4)
    a = [HybridPolicy().pick(CPU1, DEFAULT, "n1", nodes, rng).node_id for rng in [random.Random(5)] for _ in range(50)]
    b = [HybridPolicy().pick(CPU1, DEFAULT, "n1", nodes, rng).node_id for rng in [random.Random(5)] for _ in range(50)]
    assert a == b
