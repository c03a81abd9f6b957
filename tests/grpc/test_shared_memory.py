"""The gRPC transport's shared-memory object path: one copy per put, zero-copy reads, no leaks."""
import gc
import os

import numpy as np
import pytest

import rayref
from rayref._private import executor, serialization, worker
from rayref.core import protocol as p
from transports.grpc import shm, wire

from grpc_helpers import eventually
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason="needs /dev/shm")]

MiB = 1024 * 1024


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(shm.SHM_DIR, name))


def _released(check):
    """``check`` after the driver's engine ran once: dropped ObjectRefs are released on its next entry."""
    return lambda: rayref.put(None) is not None and check()


def _start(**kwargs) -> str:
    return rayref.init(transport="grpc", num_cpus=2, **kwargs)["session"]


def _stop(session: str) -> None:
    rayref.shutdown()
    assert shm.segment_names(session) == [], "a segment of the session outlived it"


def test_put_get_100_mib_is_one_shared_read_only_copy():
    session = _start()
    try:
        array = np.arange(100 * MiB // 8, dtype=np.int64)
        ref = rayref.put(array)
        out = rayref.get(ref)
        assert np.array_equal(out, array)
        assert not out.flags.writeable
        with pytest.raises(ValueError):
            out[0] = 1
        name = shm.segment_of(out)
        assert name is not None and name.startswith(f"rayref-{shm.session_id(session)}-")
        assert os.path.getsize(os.path.join(shm.SHM_DIR, name)) == array.nbytes
        assert shm.segment_of(rayref.get(ref)) == name  # every get maps the same pages
    finally:
        _stop(session)


def test_get_in_a_task_on_the_same_node_maps_the_same_segment():
    session = _start()
    try:
        @rayref.remote
        def inspect(array):
            from transports.grpc import shm as task_shm
            return task_shm.segment_of(array), array.flags.writeable, int(array[::4096].sum()), os.getpid()

        @rayref.remote
        def make(n):
            return np.full(n, 7, dtype=np.uint8)

        array = np.ones(16 * MiB, dtype=np.uint8)
        ref = rayref.put(array)
        name, writeable, total, pid = rayref.get(inspect.remote(ref))
        assert pid != os.getpid()
        assert name == shm.segment_of(rayref.get(ref)) and not writeable
        assert total == array[::4096].sum()
        made = rayref.get(make.remote(8 * MiB))  # a task's result: made in the worker, read here
        assert shm.segment_of(made) is not None and not made.flags.writeable and made[-1] == 7
        assert rayref.get(inspect.remote(make.remote(8 * MiB)))[0] is not None
    finally:
        _stop(session)


def test_a_freed_object_leaves_dev_shm():
    session = _start()
    try:
        @rayref.remote
        def first(array):
            return int(array[0])

        ref = rayref.put(np.ones(4 * MiB, dtype=np.uint8))
        got = rayref.get(ref)
        name = shm.segment_of(got)
        assert rayref.get(first.remote(ref)) == 1  # a worker mapped it too
        assert _exists(name)
        del ref
        eventually(_released(lambda: not _exists(name)), what=f"{name} unlinked once freed")
        assert got[-1] == 1  # a process still holding a mapping keeps reading it
        del got
        ref = rayref.put(np.ones(4 * MiB, dtype=np.uint8))
        eventually(lambda: len(shm.segment_names(session)) == 1, what="the put's segment made")
        del ref
        eventually(_released(lambda: shm.segment_names(session) == []), what="the session's segments unlinked")
    finally:
        _stop(session)


def test_shutdown_removes_the_sessions_leftovers():
    session = _start()
    stray = os.path.join(shm.SHM_DIR, f"rayref-{shm.session_id(session)}-999999999-0")
    try:
        refs = [rayref.put(np.ones(MiB, dtype=np.uint8) * i) for i in range(3)]
        assert [rayref.get(r)[0] for r in refs] == [0, 1, 2]
        with open(stray, "wb") as f:  # what a process killed mid-put would leave
            f.write(b"x")
        assert len(shm.segment_names(session)) == 4
    finally:
        _stop(session)
    assert not os.path.exists(stray)


def test_objects_between_nodes_are_copied_and_freed():
    """A transfer is a copy owned by the receiving node, so each node frees its own."""
    session = _start()
    try:
        other = worker.transport().add_node(num_cpus=1, resources={"B": 1})
        eventually(lambda: len(rayref.nodes()) == 2, what="two nodes registered")

        @rayref.remote(resources={"B": 1})
        def total(array):
            return int(array.sum()), rayref.get_runtime_context().get_node_id(), shm.segment_of(array)

        @rayref.remote(resources={"B": 1})
        def make():
            return np.full(2 * MiB, 3, dtype=np.uint8)

        ref = rayref.put(np.ones(4 * MiB, dtype=np.uint8))
        primary = shm.segment_of(rayref.get(ref))
        count, node, copy = rayref.get(total.remote(ref))
        assert (count, node) == (4 * MiB, other["node_id"]) and copy not in (None, primary)
        made = rayref.get(make.remote())
        assert made.sum() == 6 * MiB and shm.segment_of(made) is not None
        assert len(shm.segment_names(session)) == 4
        del ref, made
        # The owner frees the primary copies; each primary's node frees the copies it sent (P-OBJ-8).
        eventually(_released(lambda: shm.segment_names(session) == []),
                    what="the primary copies and the copies made from them unlinked once freed")
        assert not _exists(primary) and not _exists(copy)
    finally:
        _stop(session)


def test_without_shared_memory_objects_travel_in_band(monkeypatch):
    monkeypatch.setenv("RAYREF_SHM", "0")
    session = _start()
    try:
        @rayref.remote
        def double(array):
            return array * 2

        out = rayref.get(double.remote(rayref.put(np.ones(MiB, dtype=np.uint8))))
        assert out.sum() == 2 * MiB and shm.segment_of(out) is None and not out.flags.writeable
        assert shm.segment_names(session) == []
    finally:
        _stop(session)


def test_a_missing_segment_is_a_clear_object_lost_error(tmp_path):
    saved = shm._session_id
    shm.configure(str(tmp_path / "session"))
    try:
        blob = serialization.serialize(np.ones(MiB, dtype=np.uint8))
        envelope = wire.encode("n1.w1", "n1", p.PutObject(object_id="o1", owner="n1.w1", blob=blob))
        assert len(envelope) < 4096  # the buffer went by shared memory, not in the envelope
        name = shm.segment_of(blob.buffers[0])
        os.unlink(os.path.join(shm.SHM_DIR, name))
        del shm._maps[name]  # as in another process, which has not mapped it yet
        _, _, msg = wire.decode(envelope)
        assert msg.blob.is_error and msg.blob.system_error[0] == "ObjectLostError"
        assert name in msg.blob.system_error[1] and "no longer exists" in msg.blob.system_error[1]
        with pytest.raises(rayref.exceptions.ObjectLostError, match="no longer exists"):
            executor.raise_if_error(msg.blob)
        assert serialization.deserialize(blob).sum() == MiB  # the creator's mapping still reads
    finally:
        shm._session_id = saved
        del blob
        gc.collect()
        assert shm.cleanup(str(tmp_path / "session")) == 0


def test_a_full_dev_shm_falls_back_to_the_envelope(tmp_path, monkeypatch):
    saved = shm._session_id
    monkeypatch.setattr(shm, "SHM_DIR", str(tmp_path))
    shm.configure(str(tmp_path / "session"))
    real_write = os.write

    def full(fd, data):
        raise OSError(28, "No space left on device")

    try:
        blob = serialization.serialize(np.ones(MiB, dtype=np.uint8))
        monkeypatch.setattr(shm.os, "write", full)
        try:
            envelope = wire.encode("n1.w1", "n1", p.PutObject(object_id="o1", owner="n1.w1", blob=blob))
        finally:
            monkeypatch.setattr(shm.os, "write", real_write)
        assert len(envelope) > MiB and type(blob.buffers[0]) is bytes and os.listdir(tmp_path) == []
        _, _, msg = wire.decode(envelope)
        assert serialization.deserialize(msg.blob).sum() == MiB
    finally:
        shm._session_id = saved
