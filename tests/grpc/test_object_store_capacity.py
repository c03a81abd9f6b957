"""Object store capacity on the gRPC transport: the node's books and /dev/shm agree.

With ``object_store_memory`` = 50 MiB: freed objects leave shared memory, pinned objects that
outgrow the store are spilled to files of the session (and read back), copies on other nodes
go with their primary, and nothing outlives the cluster. OS1-OS3, P-OBJ-8, P-OBJ-9.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import rayref
from rayref._private import serialization, worker
from rayref.core import protocol as p
from transports.grpc import shm, wire

from grpc_helpers import eventually, processes_of

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason="needs /dev/shm")]

MiB = 1024 * 1024
CAPACITY = 50 * MiB


def _released(check):
    """``check`` after the driver's engine ran once (dropped ObjectRefs are released on its next
    entry) and sent its node something (a node's reader holds the last envelope it routed)."""
    return lambda: rayref.put(None) is not None and rayref.available_resources() and check()


def _shm_bytes(session: str) -> int:
    total = 0
    for name in shm.segment_names(session):
        try:
            total += os.path.getsize(os.path.join(shm.SHM_DIR, name))
        except FileNotFoundError:
            pass
    return total


def _deleted_segments_mapped_here(session: str) -> list[str]:
    """Unlinked segments of the session this process still maps (their memory is still in use)."""
    prefix = f"{shm.SHM_DIR}/rayref-{shm.session_id(session)}-"
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-2] for line in f if prefix in line and line.rstrip().endswith("(deleted)")})


def _array(i: int) -> np.ndarray:
    return np.full(16 * MiB // 8, i, dtype=np.int64)


@pytest.fixture
def session():
    path = rayref.init(transport="grpc", num_cpus=2, object_store_memory=CAPACITY)["session"]
    yield path
    rayref.shutdown()
    assert processes_of(path) == [], "a process of the session outlived it"
    assert shm.segment_names(path) == [], "a segment of the session outlived it"
    assert shm.spilled_names(path) == [] and not os.path.exists(path), "a spill file outlived the session"


def test_freed_objects_leave_room_without_spilling(session):
    """Ten 16 MiB puts through a 50 MiB store, each dropped before the next: nothing is spilled,
    and a freed object's segment is unlinked (at once when no process was sent it, else within
    shm.GRACE)."""
    for i in range(10):
        ref = rayref.put(_array(i))
        assert len(shm.segment_names(session)) <= 2  # this put's, and the previous one until its free lands
        if i == 9:
            assert rayref.get(ref)[-1] == 9
        del ref
    eventually(_released(lambda: shm.segment_names(session) == []), what="every segment unlinked")
    assert shm.spilled_names(session) == []


def test_pinned_objects_beyond_capacity_are_spilled_and_read_back(session):
    """Six 16 MiB objects held at once: the oldest three go to spill files, all six read back."""
    @rayref.remote
    def last(array):
        return int(array[-1])

    refs = [rayref.put(_array(i)) for i in range(6)]
    eventually(lambda: len(shm.spilled_names(session)) == 3, what="three objects spilled")
    eventually(lambda: _shm_bytes(session) <= CAPACITY, what="shared memory within the capacity")
    assert _deleted_segments_mapped_here(session) == []  # the putter keeps no mapping of what it put
    assert [int(rayref.get(r)[0]) for r in refs] == list(range(6))
    spilled = rayref.get(refs[0])
    assert shm.segment_of(spilled) in shm.spilled_names(session) and not spilled.flags.writeable
    assert rayref.get([last.remote(r) for r in refs]) == list(range(6))  # a worker maps the spill files too
    del refs, spilled
    eventually(_released(lambda: shm.segment_names(session) == [] and shm.spilled_names(session) == []),
                what="segments and spill files removed once freed")


def test_an_object_larger_than_the_store_is_spilled_on_arrival(session):
    ref = rayref.put(np.ones(64 * MiB, dtype=np.uint8))
    eventually(_released(lambda: len(shm.spilled_names(session)) == 1 and shm.segment_names(session) == []),
                what="the object moved to a spill file")
    assert int(rayref.get(ref)[::4096].sum()) == 64 * MiB // 4096


def test_copies_on_other_nodes_are_freed_with_their_primary(session):
    """A copy pulled to another node, from memory or from a spill file, goes when the owner frees it."""
    other = worker.transport().add_node(num_cpus=1, resources={"B": 1}, object_store_memory=CAPACITY)
    eventually(lambda: len(rayref.nodes()) == 2, what="two nodes registered")

    @rayref.remote(resources={"B": 1})
    def where(array):
        return int(array[0]), rayref.get_runtime_context().get_node_id()

    refs = [rayref.put(_array(i)) for i in range(4)]  # the first is spilled on the head
    eventually(lambda: len(shm.spilled_names(session)) == 1, what="one object spilled")
    assert rayref.get([where.remote(r) for r in refs]) == [(i, other["node_id"]) for i in range(4)]
    del refs
    eventually(_released(lambda: shm.segment_names(session) == [] and shm.spilled_names(session) == []),
                what="primaries, spill file and the other node's copies removed")


def test_a_spilled_buffer_travels_as_a_disk_descriptor_and_a_full_disk_keeps_it_in_memory(tmp_path, monkeypatch):
    """P-CMD-10 in one process: what a node's shm.spill makes, readers map from the spill folder."""
    saved = shm._session_id, shm._session_path
    session_path = str(tmp_path / "session")
    shm.configure(session_path)
    try:
        blob = serialization.serialize(np.arange(MiB, dtype=np.int64))
        _, _, put = wire.decode(wire.encode("n1.w1", "n1", p.PutObject(object_id="o1", owner="n1.w1", blob=blob)))
        spilled = shm.spill(put.blob)
        assert [shm.segment_of(b) for b in spilled.buffers] == shm.spilled_names(session_path)
        envelope = wire.encode("n1", "n1.w2", p.ObjectLocal(object_id="o1", blob=spilled))
        assert b"disk" in envelope and len(envelope) < 4096
        _, _, local = wire.decode(envelope)
        assert serialization.deserialize(local.blob)[-1] == MiB - 1

        def full(fd, data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(shm.os, "write", full)
        assert shm.spill(put.blob) is put.blob  # stays in memory, with a warning
    finally:
        monkeypatch.undo()
        shm._session_id, shm._session_path = saved
        shm.cleanup(session_path)  # unlinks by name; this process's mappings go with the test's locals
        assert shm.segment_names(session_path) == [] == shm.spilled_names(session_path)


def test_a_departed_drivers_objects_leave_shared_memory(session):
    """P-ACT-7, LIFE2: a connected driver that puts a large object and exits (no shutdown) owned
    it; with its owner gone the node frees it, so its segment leaves /dev/shm."""
    address = worker.transport().context_info()["address"]
    script = ("import os, numpy as np, rayref\n"
              f"rayref.init(address={address!r})\n"
              "ref = rayref.put(np.ones(4 * 1024 * 1024))\n"
              "print('put', flush=True)\n"
              "os._exit(0)\n")
    before = _shm_bytes(session)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "put" in done.stdout, done.stderr
    eventually(_released(lambda: _shm_bytes(session) == before), 15, "the departed driver's object freed")
