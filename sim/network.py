"""The network model: how long a message takes from one node to another.

A message costs a latency plus its payload bytes over a bandwidth: one pair of figures
within a node (inter-process copies), another between nodes. ``slow_link`` overrides the
figures for one pair of nodes (both directions). Messages between one sender and one
receiver are delivered in the order they were sent, as over one stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NetworkModel:
    local_latency: float = 20e-6
    remote_latency: float = 200e-6
    local_bandwidth: float = 8e9
    remote_bandwidth: float = 1.25e9
    links: dict = field(default_factory=dict)

    def delay(self, src_node: str, dst_node: str, nbytes: int) -> float:
        if src_node == dst_node:
            return self.local_latency + nbytes / self.local_bandwidth
        link = self.links.get((src_node, dst_node))
        latency, bandwidth = link if link else (self.remote_latency, self.remote_bandwidth)
        return latency + nbytes / bandwidth

    def slow_link(self, a: str, b: str, latency: float, bandwidth: float) -> None:
        self.links[(a, b)] = self.links[(b, a)] = (latency, bandwidth)
