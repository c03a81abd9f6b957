"""Objects between nodes move in chunks over the nodes' gRPC streams (W-11), never through a shared segment."""
import numpy as np
import pytest

import rayref
from rayref._private import serialization, worker
from rayref.core import protocol as p
from transports.grpc import shm, wire

from grpc_helpers import eventually

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


def _pattern(n: int) -> np.ndarray:
    """Bytes whose every chunk differs, so a chunk out of place or missing cannot go unnoticed."""
    return (np.arange(n, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)


def _transfer_blob(n: int) -> p.Blob:
    return serialization.serialize(_pattern(n))


def _as_node(monkeypatch, tmp_path, node_id: str) -> None:
    """Encode and decode here as the node process ``node_id`` of a session in ``tmp_path``."""
    monkeypatch.setattr(shm, "_session_id", shm.session_id(str(tmp_path)))
    monkeypatch.setattr(shm, "_session_path", str(tmp_path))
    monkeypatch.setattr(shm, "_node_id", node_id)


def test_a_transfer_is_its_chunks_then_the_envelope_each_batch_at_most_a_chunk(monkeypatch, tmp_path):
    _as_node(monkeypatch, tmp_path, "nA")
    size = 12 * MiB + 5
    msg = p.ObjectTransfer(object_id="o1", blob=_transfer_blob(size), from_node="nA")
    outbox = wire.Outbox()
    items = wire.encode_for_node("nA", "nB", msg)
    assert len(items) == 4 and all(callable(item) for item in items[:3]) and isinstance(items[-1], bytes)
    assert len(items[-1]) < 64 * 1024, "the envelope names the chunks rather than carrying the bytes"
    for item in items:
        outbox.put(item)
    batches = []
    while outbox.items:
        batches.append(wire.pack(outbox.take(wire.BATCH_BYTES)))
    assert len(batches) == 3 and max(len(b) for b in batches) < shm.CHUNK_BYTES + 64 * 1024

    monkeypatch.setattr(shm, "_node_id", "nB")  # the receiving node decodes them in stream order
    received = []
    for batch in batches:
        for src, to, message in wire.unpack(batch):
            if type(message) is shm.Chunk:
                shm.receive_chunk(message)
            else:
                received.append(message)
    (transfer,) = received
    value = serialization.deserialize(transfer.blob)
    assert np.array_equal(value, _pattern(size)) and not value.flags.writeable
    assert shm.segment_of(value) is not None, "the receiving node's copy is a segment of its own"
    del value, transfer, received, message
    eventually(lambda: shm.segment_names(str(tmp_path)) == [], timeout=3 * shm.GRACE,
               what="the receiving node's copy unlinked once nothing maps it")


def test_a_transfer_cut_short_is_a_clear_object_lost_error(monkeypatch, tmp_path):
    _as_node(monkeypatch, tmp_path, "nA")
    msg = p.ObjectTransfer(object_id="o2", blob=_transfer_blob(11 * MiB), from_node="nA")
    first, _second, _third, envelope = wire.encode_for_node("nA", "nB", msg)
    monkeypatch.setattr(shm, "_node_id", "nB")
    shm.receive_chunk(wire.decode(first())[2])  # one chunk of three arrives, then the envelope
    assert len(shm.segment_names(str(tmp_path))) == 1, "the first chunk went into the receiving node's segment"
    _, _, transfer = wire.decode(envelope)
    assert transfer.blob.is_error and transfer.blob.system_error[0] == "ObjectLostError"
    assert "cut short" in transfer.blob.system_error[1]
    assert shm.segment_names(str(tmp_path)) == [], "what arrived of it is gone"


@pytest.mark.parametrize("shared_memory", ["1", "0"])
def test_objects_cross_three_nodes_in_chunks(monkeypatch, shared_memory):
    """W-4, W-11: a 12 MiB array made on B is read by a task on C and by the driver on the head."""
    monkeypatch.setenv("RAYREF_SHM", shared_memory)
    session = rayref.init(transport="grpc", num_cpus=1)["session"]
    try:
        transport = worker.transport()
        transport.add_node(num_cpus=1, resources={"B": 1})
        c = transport.add_node(num_cpus=1, resources={"C": 1})
        eventually(lambda: len(rayref.nodes()) == 3, what="three nodes registered")
        size = 12 * MiB + 3

        def pattern():  # defined here, so that it travels with the tasks (this module is not on the workers' path)
            return (np.arange(size, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)

        @rayref.remote(resources={"B": 1})
        def make():
            return pattern()

        @rayref.remote(resources={"C": 1})
        def check(array):
            return bool(np.array_equal(array, pattern())), rayref.get_runtime_context().get_node_id()

        ref = make.remote()
        assert rayref.get(check.remote(ref)) == (True, c["node_id"])
        assert np.array_equal(rayref.get(ref), pattern())
        if shared_memory == "0":
            assert shm.segment_names(session) == []
    finally:
        rayref.shutdown()
    assert shm.segment_names(session) == [], "a segment of the session outlived it"


def test_a_transfer_cut_short_by_its_stream_ending_leaves_no_segment(monkeypatch, tmp_path):
    """G-STORE: a peer's stream that ends between a transfer's chunks takes what arrived of it
    along, segment and all; a transfer that came whole on another stream is untouched."""
    import asyncio
    from transports.grpc.node import NodeServer
    from rayref.core.resources import Resources

    _as_node(monkeypatch, tmp_path, "nA")
    cut = wire.encode_for_node("nA", "nB", p.ObjectTransfer(object_id="o3", blob=_transfer_blob(11 * MiB), from_node="nA"))
    whole = wire.encode_for_node("nA", "nB", p.ObjectTransfer(object_id="o4", blob=_transfer_blob(5 * MiB), from_node="nA"))
    monkeypatch.setattr(shm, "_node_id", "nB")
    node = NodeServer(node_id="nB", session=str(tmp_path), token="t", total=Resources(), store_bytes=2**30,
                      head_id="nH", head_endpoint="127.0.0.1:1")

    class Context:
        def invocation_metadata(self):
            return wire.metadata("t")

    async def stream(items):
        for item in items:
            yield wire.pack([item() if callable(item) else item])

    async def main():
        node.stopped = asyncio.Event()
        other = shm.Chunk("other-stream", 0, 10, b"x" * 5)
        shm.receive_chunk(other, stream="another call")  # half of a transfer still arriving elsewhere
        routed = []
        monkeypatch.setattr(node, "route", lambda src, to, msg: routed.append(msg))
        await node.receive(stream([cut[0], *whole]), Context())  # one chunk of three, then the stream ends
        return routed

    routed = asyncio.run(main())
    assert len(routed) == 1 and len(serialization.deserialize(routed[0].blob)) == 5 * MiB
    routed.clear()
    assert shm._assemblies.keys() == {"other-stream"}, "the cut transfer's part is gone, the other stream's kept"
    shm.discard_cut_short("another call")
    eventually(lambda: shm.segment_names(str(tmp_path)) == [], timeout=3 * shm.GRACE,
               what="no segment left of either transfer")


def test_a_chunk_is_one_copy_on_the_sender(monkeypatch, tmp_path):
    """A chunk's bytes are read from the object by pickling its envelope (a PickleBuffer over the
    object), and a batch of that one envelope is the envelope itself: one chunk-sized copy (there
    were three: the chunk's bytes, its envelope, the batch)."""
    import tracemalloc
    _as_node(monkeypatch, tmp_path, "nA")
    first, *_ = wire.encode_for_node("nA", "nB", p.ObjectTransfer(object_id="o5", blob=_transfer_blob(11 * MiB),
                                                                  from_node="nA"))
    tracemalloc.start()
    try:
        envelope = first()
        batch = wire.pack([envelope])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * shm.CHUNK_BYTES, f"{peak / MiB:.1f} MiB allocated to send one 5 MiB chunk"  # pickle's buffer grows by half
    assert batch is envelope and len(batch) > shm.CHUNK_BYTES
    (_, _, chunk), = wire.unpack(batch)
    assert chunk.offset == 0 and bytes(chunk.data) == _pattern(11 * MiB).tobytes()[:shm.CHUNK_BYTES]
