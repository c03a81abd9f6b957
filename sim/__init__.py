"""The simulated world: clusters in virtual time, deterministic by seed.

``sim.Cluster(seed=...)`` builds a cluster node by node; ``cluster.connect()`` makes the
``rayref`` API talk to it. See ``sim.cluster`` for the contract and ``sim.network`` for the
latency/bandwidth model.
"""
from sim.cluster import Cluster, SimConfig
from sim.network import NetworkModel

__all__ = ["Cluster", "NetworkModel", "SimConfig"]
