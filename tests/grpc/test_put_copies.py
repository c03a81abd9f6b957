"""``put`` of a large array on gRPC is one copy, from the caller's array straight into shared memory.

``serialize(..., defer_large=True)`` leaves large buffers as views of the caller's memory; the
codec copies each into a new segment as it encodes the ``PutObject`` (in the calling thread,
before ``put`` returns) and the kept Blob reads the mapping. Where no segment can be made the
codec's in-band copy is the one copy. Either way nothing is left aliasing the caller (IMM1).
"""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import rayref
from rayref._private import serialization
from rayref.core import protocol as p
from transports.grpc import shm, wire

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.isdir(shm.SHM_DIR), reason="needs /dev/shm")]

MiB = 1024 * 1024


@pytest.fixture
def codec_session(tmp_path):
    """The codec of a driver of a throwaway session (no cluster); its segments are removed after."""
    saved = shm._session_id
    shm.configure(str(tmp_path / "session"))
    yield
    shm._session_id = saved
    gc.collect()
    shm.cleanup(str(tmp_path / "session"))


def _put_envelope(blob: p.Blob) -> bytes:
    return wire.encode("n1.w1", "n1", p.PutObject(object_id="o1", owner="n1.w1", blob=blob))


def test_large_buffers_are_deferred_only_when_asked():
    array = np.ones(MiB, dtype=np.uint8)
    deferred = serialization.serialize(array, defer_large=True)
    assert serialization.is_deferred(deferred.buffers[0]) and deferred.nbytes > MiB
    copied = serialization.serialize(array)
    assert type(copied.buffers[0]) is bytes and copied.nbytes == deferred.nbytes
    small = serialization.serialize(np.ones(1024, dtype=np.uint8), defer_large=True)
    assert all(type(b) is bytes for b in small.buffers)
    serialization.copy_deferred(deferred)
    array[:] = 0
    assert type(deferred.buffers[0]) is bytes and serialization.deserialize(deferred).sum() == MiB


def test_encoding_a_put_copies_a_deferred_buffer_into_a_segment_the_blob_then_reads(codec_session):
    """IMM1: the one copy is made at encode time; afterwards the caller's array is free to change."""
    array = np.arange(MiB, dtype=np.int64)
    blob = serialization.serialize(array, defer_large=True)
    envelope = _put_envelope(blob)
    assert len(envelope) < 4096  # the buffer went by shared memory
    name = shm.segment_of(blob.buffers[0])
    assert name is not None  # the Blob kept here reads the segment
    kept = blob.buffers
    serialization.copy_deferred(blob)
    assert blob.buffers is kept  # nothing left to copy
    array[:] = -1
    out = serialization.deserialize(blob)
    assert np.array_equal(out, np.arange(MiB)) and not out.flags.writeable
    assert os.path.getsize(os.path.join(shm.SHM_DIR, name)) == array.nbytes


def test_a_fortran_ordered_array_is_copied_whole(codec_session):
    array = np.asfortranarray(np.arange(512 * 256, dtype=np.float64).reshape(512, 256))
    expected = array.copy(order="F")
    blob = serialization.serialize(array, defer_large=True)
    _put_envelope(blob)
    array[:] = 0
    out = serialization.deserialize(blob)
    assert np.array_equal(out, expected) and out.flags.f_contiguous and shm.segment_of(out) is not None


def test_without_a_segment_the_envelope_s_copy_is_the_one_copy(codec_session, tmp_path, monkeypatch):
    """A full /dev/shm: the deferred buffer is copied into the envelope and the Blob keeps that copy."""
    monkeypatch.setattr(shm, "SHM_DIR", str(tmp_path))

    def full(fd, data):
        raise OSError(28, "No space left on device")

    array = np.ones(MiB, dtype=np.uint8)
    blob = serialization.serialize(array, defer_large=True)
    monkeypatch.setattr(shm.os, "write", full)
    envelope = _put_envelope(blob)
    monkeypatch.undo()
    assert len(envelope) > MiB and type(blob.buffers[0]) is bytes
    array[:] = 0
    assert serialization.deserialize(blob).sum() == MiB
    assert serialization.deserialize(wire.decode(envelope)[2].blob).sum() == MiB


def test_a_message_that_is_not_store_bound_copies_a_deferred_buffer_in_band(codec_session):
    array = np.ones(MiB, dtype=np.uint8)
    blob = serialization.serialize(array, defer_large=True)
    envelope = wire.encode("n1.w1", "n1.w2", p.ObjectStatus(object_id="o1", blob=blob))
    assert len(envelope) > MiB and type(blob.buffers[0]) is bytes
    array[:] = 0
    assert serialization.deserialize(wire.decode(envelope)[2].blob).sum() == MiB


def test_put_of_a_large_array_allocates_no_private_copy():
    """The put copies into the segment only: no process-private buffer of the array's size is made."""
    session = rayref.init(transport="grpc", num_cpus=1)["session"]
    try:
        array = np.arange(32 * MiB // 8, dtype=np.int64)
        rayref.put(array)  # warm up the path
        tracemalloc.start()
        try:
            ref = rayref.put(array)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < array.nbytes // 8, f"put allocated {peak} bytes for a {array.nbytes} byte array"
        array[:] = -1
        out = rayref.get(ref)
        assert np.array_equal(out, np.arange(32 * MiB // 8)) and not out.flags.writeable
        assert shm.segment_of(out) is not None  # get maps the segment: zero-copy
        del out, ref
    finally:
        rayref.shutdown()
        assert shm.segment_names(session) == []


def test_without_shared_memory_a_put_still_never_aliases_the_array(monkeypatch):
    """IMM1 with RAYREF_SHM=0: the codec's in-band copy is kept, nothing aliases the caller."""
    monkeypatch.setenv("RAYREF_SHM", "0")
    rayref.init(transport="grpc", num_cpus=1)
    try:
        array = np.ones(4 * MiB, dtype=np.uint8)
        ref = rayref.put(array)
        array[:] = 0
        out = rayref.get(ref)
        assert out.sum() == 4 * MiB and shm.segment_of(out) is None and not out.flags.writeable
    finally:
        rayref.shutdown()


def test_a_large_task_return_is_one_copy_into_shared_memory():
    """A returned array is copied once, straight into its segment, as a put is: the worker makes
    no private copy of its size; and the stored value does not follow later changes (IMM1)."""
    rayref.init(transport="grpc", num_cpus=1)
    try:
        @rayref.remote
        class Holder:
            def __init__(self):
                self.array = np.arange(32 * MiB // 8, dtype=np.int64)

            def trace(self):
                tracemalloc.start()

            def value(self):
                return self.array

            def peak_and_bump(self):
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                self.array[:] = -1
                return peak

        holder = Holder.remote()
        rayref.get(holder.value.remote())  # warm up the path
        rayref.get(holder.trace.remote())
        ref = holder.value.remote()
        peak = rayref.get(holder.peak_and_bump.remote())  # calls run in order: after the return was stored
        assert peak < 4 * MiB, f"returning a 32 MiB array allocated {peak} bytes in the worker"
        out = rayref.get(ref)
        assert np.array_equal(out, np.arange(32 * MiB // 8)) and shm.segment_of(out) is not None
    finally:
        rayref.shutdown()
