"""Shared fixtures. Every test leaves rayref disconnected, whatever happened in it."""
from __future__ import annotations

import os

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
        session = rayref.init(transport=request.param, num_cpus=4, num_gpus=2, resources={"Custom": 2},
                              object_store_memory=1024**3)["session"]
    yield rayref
    rayref.shutdown()
    if request.param == "grpc":
        _nothing_left_of(session)


def _nothing_left_of(session: str) -> None:
    """LIFE2 after a conformance test on grpc: no process and no shared-memory segment of its session."""
    from transports.grpc import shm
    assert not os.path.exists(session), f"the session directory {session} outlived shutdown()"
    assert shm.segment_names(session) == [], f"segments of {session} outlived shutdown()"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    assert session.encode() not in f.read(), f"process {entry} of {session} outlived shutdown()"
            except OSError:
                continue


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
