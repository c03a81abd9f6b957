"""Scheduling policies: given a request and a view of the cluster, pick a node.

A policy is a small object with one method, ``pick``. It sees only what it is given: the
request, the strategy, the node asking, the nodes (in a fixed order) and the run's random
source. Swapping it is how scheduler research is done, in sim and on a real cluster alike.

``Placement.node_id`` is where to go; ``Placement.ready`` says the node can run it now
(otherwise the request queues there); an empty ``node_id`` means no node can ever run it,
and ``Placement.reason`` says why.

The hybrid policy is Ray's default: a node whose most-used resource is below the spread
threshold (0.5) counts as empty; the local node wins when it is below the threshold;
otherwise the pick is uniform among the ``top_k`` least-used nodes that can run it now
(k = max(1, 20% of the nodes), widened to every node tied with the k-th). If none can run it now, it queues at the local node if
that could ever run it, else at the least-used node that could.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rayref.core.protocol import NodeInfo, SchedulingStrategy
from rayref.core.resources import Resources


@dataclass(frozen=True, slots=True)
class Placement:
    node_id: str
    ready: bool = False
    reason: str = ""


class SchedulingPolicy(Protocol):
    def pick(self, request: Resources, strategy: SchedulingStrategy, local: str,
             nodes: Sequence[NodeInfo], rng: Any) -> Placement: ...


def _split(request: Resources, nodes: Sequence[NodeInfo]) -> tuple[list[NodeInfo], list[NodeInfo]]:
    """(nodes that could ever run the request, those of them that can run it now), one pass."""
    feasible, ready = [], []
    for node in nodes:
        if not node.alive:
            continue
        if request.fits_in(node.available):
            feasible.append(node)
            ready.append(node)
        elif request.fits_in(node.total):
            feasible.append(node)
    return feasible, ready


def _infeasible(request: Resources) -> Placement:
    return Placement("", reason=f"no node in the cluster has {request.to_dict()} in total")


class HybridPolicy:
    def __init__(self, spread_threshold: float = 0.5, top_k_fraction: float = 0.2, default: str = "DEFAULT"):
        self.spread_threshold = spread_threshold
        self.top_k_fraction = top_k_fraction
        self.default = default
        self.spread = SpreadPolicy()

    def pick(self, request, strategy, local, nodes, rng) -> Placement:
        if strategy.kind == "SPREAD" or (strategy.kind == "DEFAULT" and self.default == "SPREAD"):
            return self.spread.pick(request, strategy, local, nodes, rng)
        if strategy.kind == "NODE_AFFINITY":
            return self._affinity(request, strategy, local, nodes, rng)
        return self._hybrid(request, local, nodes, rng)

    def _score(self, node: NodeInfo) -> float:
        used = node.utilization
        return 0.0 if used < self.spread_threshold else used

    def _hybrid(self, request, local, nodes, rng) -> Placement:
        feasible, ready = _split(request, nodes)
        if not feasible:
            return _infeasible(request)
        if ready:
            for node in ready:
                if node.node_id == local and self._score(node) == 0.0:
                    return Placement(local, ready=True)
            scored = [(self._score(n), i, n) for i, n in enumerate(ready)]
            scored.sort()
            k = max(1, int(self.top_k_fraction * len(nodes)))
            cutoff = scored[min(k, len(scored)) - 1][0]
            top = [n for score, _, n in scored if score <= cutoff]
            return Placement(top[int(rng.random() * len(top))].node_id, ready=True)
        for node in feasible:
            if node.node_id == local:
                return Placement(local)
        return Placement(min(feasible, key=self._score).node_id)

    def _affinity(self, request, strategy, local, nodes, rng) -> Placement:
        target = next((n for n in nodes if n.node_id == strategy.node_id), None)
        usable = target is not None and target.alive and request.fits_in(target.total)
        if usable:
            return Placement(target.node_id, ready=request.fits_in(target.available))
        if strategy.soft:
            return self._hybrid(request, local, nodes, rng)
        what = "is not alive" if target is None or not target.alive else "lacks the resources"
        return Placement("", reason=f"node {strategy.node_id} named by "
                                    f"NodeAffinitySchedulingStrategy {what} (soft=False)")


class SpreadPolicy:
    """Round robin over the nodes that can run the request now (else that ever could)."""

    def __init__(self):
        self.next_index = 0

    def pick(self, request, strategy, local, nodes, rng) -> Placement:
        feasible, ready = _split(request, nodes)
        if not feasible:
            return _infeasible(request)
        pool = ready or feasible
        node = pool[self.next_index % len(pool)]
        self.next_index += 1
        return Placement(node.node_id, ready=bool(ready))


class RandomPolicy(HybridPolicy):
    """Uniform among the nodes that can run the request now; for experiments."""

    def _hybrid(self, request, local, nodes, rng) -> Placement:
        feasible, ready = _split(request, nodes)
        if not feasible:
            return _infeasible(request)
        pool = ready or feasible
        return Placement(pool[int(rng.random() * len(pool))].node_id, ready=bool(ready))


def make_policy(config) -> HybridPolicy:
    """The policy ``config.scheduling_policy`` names: what the DEFAULT strategy means.

    'hybrid' (Ray's), 'spread' or 'random'; SPREAD and node affinity are honoured by all.
    """
    name = config.scheduling_policy
    if name not in ("hybrid", "spread", "random"):
        raise ValueError(f"Unknown scheduling_policy {name!r}; choose 'hybrid', 'spread' or 'random'.")
    cls = RandomPolicy if name == "random" else HybridPolicy
    return cls(config.spread_threshold, config.top_k_fraction, default="SPREAD" if name == "spread" else "DEFAULT")
