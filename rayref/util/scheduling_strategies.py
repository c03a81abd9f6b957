"""Scheduling strategies, by Ray's names (``ray.util.scheduling_strategies``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on ``node_id``; with ``soft=True`` run elsewhere if that node cannot."""

    node_id: str
    soft: bool = False

    def __post_init__(self):
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError("NodeAffinitySchedulingStrategy needs node_id, a node id string as given by "
                             "ray.get_runtime_context().get_node_id() or ray.nodes()[i]['NodeID'].")
