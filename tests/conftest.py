"""Shared fixtures. Every test leaves rayref disconnected, whatever happened in it."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

import rayref

settings.register_profile("rayref", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("rayref")

TRANSPORTS = ["sim", "grpc"]


@pytest.fixture(autouse=True)
def _always_disconnect():
    yield
    if rayref.is_initialized():
        rayref.shutdown()


@pytest.fixture
def ray_sim():
    """A one-node simulated cluster with 4 CPUs, seed 0, checking invariants after every message."""
    from sim import Cluster, SimConfig
    cluster = Cluster(seed=0, sim=SimConfig(validate=True))
    cluster.add_node(num_cpus=4, memory=4 * 1024**3, object_store_memory=1024**3)
    cluster.connect()
    yield rayref
    rayref.shutdown()


@pytest.fixture(params=TRANSPORTS)
def ray_start(request):
    """The conformance suite's cluster: one node, 4 CPUs, on each transport in turn.

    Tests using it must hold on every transport; transport-specific tests use their own fixtures.
    """
    if request.param == "sim":
        from sim import Cluster, SimConfig
        cluster = Cluster(seed=0, sim=SimConfig(validate=True))
        cluster.add_node(num_cpus=4, num_gpus=2, resources={"Custom": 2}, memory=4 * 1024**3,
                         object_store_memory=1024**3)
        cluster.connect()
    else:
        rayref.init(transport=request.param, num_cpus=4, num_gpus=2, resources={"Custom": 2},
                    object_store_memory=1024**3)
    yield rayref
    rayref.shutdown()


@pytest.fixture
def make_cluster():
    """make_cluster(seed, [node kwargs, ...], **sim options) -> connected sim.Cluster."""
    from sim import Cluster, SimConfig

    def build(seed=0, nodes=({"num_cpus": 4},), validate=True, **kwargs):
        cluster = Cluster(seed=seed, sim=SimConfig(validate=validate), **kwargs)
        for spec in nodes:
            spec = {"memory": 4 * 1024**3, "object_store_memory": 1024**3, **spec}
            cluster.add_node(**spec)
        cluster.connect()
        return cluster

    return build
