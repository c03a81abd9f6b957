"""``sim.Cluster``: a simulated cluster, built node by node, that the rayref API can talk to.

    cluster = sim.Cluster(seed=7)
    head = cluster.add_node(num_cpus=8)
    cluster.add_node(num_cpus=8, num_gpus=2, resources={"TPU": 4})
    cluster.connect()              # rayref.* now talks to this cluster
    ...
    cluster.kill_node("node-0002")  # or at=12.5 (virtual seconds); detected after 15 s
    cluster.now                    # virtual seconds
    cluster.trace_digest()         # same program + same seed -> same digest
    rayref.shutdown()

Nodes get ids ``node-0001``, ``node-0002``, ... in the order they are added; the first one is
the head (it hosts the control plane and the driver). Defaults follow ``ray.init()``: all of
the host's CPUs, no GPUs, 30% of its memory for the object store and the rest as ``memory``;
pass the figures explicitly for a run that replays the same on any machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from rayref._private import worker
from rayref.core.config import EngineConfig
from rayref.core.resources import Resources
from sim.network import NetworkModel
from transports.sim.runtime import INF, SimRuntime


@dataclass(frozen=True)
class SimConfig:
    worker_start_delay: float = 0.05
    """Virtual seconds from a node manager's StartWorker to the worker registering."""
    validate: bool = False
    """Run every engine's ``validate()`` after every message it handles (tests turn it on)."""
    keep_trace: bool = False
    """Keep every traced message as a line in ``cluster.trace_lines()``."""
    node_death_detection_s: float = 15.0
    """Virtual seconds from ``kill_node`` to the control plane hearing ``NodeDied``. Ray's GCS
    checks each raylet every 3 s (``health_check_period_ms``) and marks it dead after 5 failed
    checks in a row (``health_check_failure_threshold``): about 15 s for a node that is gone."""


@dataclass(frozen=True)
class SimNode:
    node_id: str
    address: str
    is_head: bool


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024 ** 3


class Cluster:
    def __init__(self, seed: int = 0, *, network: NetworkModel | None = None, config: EngineConfig | None = None,
                 sim: SimConfig | None = None):
        self.seed = seed
        self.network = network or NetworkModel()
        self.config = config or EngineConfig()
        self.sim = sim or SimConfig()
        self.runtime = SimRuntime(seed, self.config, self.network, worker_start_delay=self.sim.worker_start_delay,
                                  validate=self.sim.validate, keep_trace=self.sim.keep_trace,
                                  node_death_detection_s=self.sim.node_death_detection_s)
        self.nodes: list[SimNode] = []
        self._transport = None

    def add_node(self, num_cpus: float | None = None, num_gpus: float | None = None, resources: dict | None = None,
                 object_store_memory: int | None = None, memory: int | None = None,
                 labels: dict | None = None) -> SimNode:
        host = _host_memory()
        store = int(object_store_memory if object_store_memory is not None else host * 0.3)
        index = len(self.nodes) + 1
        node_id, address = f"node-{index:04d}", f"sim-node-{index}"
        is_head = index == 1
        amounts = dict(resources or {})
        amounts.update({"CPU": num_cpus if num_cpus is not None else (os.cpu_count() or 1),
                        "GPU": num_gpus or 0, "object_store_memory": store,
                        "memory": memory if memory is not None else max(0, int(host * 0.7) - store),
                        f"node:{address}": 1})
        if is_head:
            amounts["node:__internal_head__"] = 1
        self.runtime.add_node(node_id, Resources(amounts), store, is_head, tuple(sorted((labels or {}).items())),
                              address=address)
        node = SimNode(node_id, address, is_head)
        self.nodes.append(node)
        return node

    def connect(self, namespace: str | None = None, runtime_env: dict | None = None,
                owns_cluster: bool = False) -> None:
        """Make the rayref API talk to this cluster, as its driver."""
        if worker.transport() is not None:
            raise RuntimeError("rayref is already connected to a cluster; call rayref.shutdown() first.")
        if not self.nodes:
            raise ValueError("The cluster has no nodes; call cluster.add_node(...) before connect().")
        self.settle()
        env = (runtime_env or {}).get("env_vars") or {}
        self.runtime.connect_driver(namespace or "anonymous", env)
        self._transport = SimTransport(self, owns_cluster)
        worker.set_transport(self._transport)

    def kill_node(self, node_id: str, at: float | None = None) -> None:
        """Kill a node now, or at virtual time ``at``: its node manager and every process on it stop
        at once (messages to them are dropped); the control plane hears ``NodeDied``
        ``SimConfig.node_death_detection_s`` later. The head node cannot be killed."""
        node = next((n for n in self.nodes if n.node_id == node_id), None)
        if node is None:
            raise ValueError(f"No node {node_id!r} in this cluster; its nodes are {[n.node_id for n in self.nodes]}.")
        if node.is_head:
            raise ValueError(f"Killing the head node {node_id} is not supported: it hosts the control plane "
                             f"and the driver. Kill another node.")
        if at is not None and at < self.now:
            raise ValueError(f"at={at} is in the past (the virtual clock reads {self.now}).")
        self.runtime.kill_node(node_id, 0.0 if at is None else at - self.now)

    def settle(self) -> None:
        """Run the simulation until nothing is left to happen (e.g. nodes and workers starting)."""
        env = self.runtime.env
        while env.peek() < INF:
            env.step()

    @property
    def now(self) -> float:
        return self.runtime.env.now

    def trace_digest(self) -> str:
        return self.runtime.trace.digest()

    def trace_lines(self) -> list[str]:
        return list(self.runtime.trace.events or [])

    def story(self, key: str) -> list[str]:
        """The traced messages about one task, object, lease, actor or worker (needs keep_trace)."""
        if self.runtime.trace.events is None:
            raise ValueError("story() needs the trace kept: build the cluster with sim=SimConfig(keep_trace=True).")
        return [line for line in self.runtime.trace.events if key in line.rsplit("|", 1)[-1]]

    @property
    def warnings(self) -> list[str]:
        return list(self.runtime.warnings)

    def validate(self) -> None:
        self.runtime.validate_all()

    def shutdown(self) -> None:
        if worker.transport() is self._transport and self._transport is not None:
            worker.set_transport(None)
        self.runtime.shutdown()


class SimTransport:
    kind = "sim"

    def __init__(self, cluster: Cluster, owns_cluster: bool):
        self.cluster = cluster
        self.owns_cluster = owns_cluster

    def current(self):
        return self.cluster.runtime.current()

    def shutdown(self) -> None:
        self.cluster.runtime.shutdown()

    def context_info(self) -> dict:
        return {"transport": "sim", "seed": self.cluster.seed, "nodes": [n.node_id for n in self.cluster.nodes],
                "address": "sim://" + self.cluster.nodes[0].address}
