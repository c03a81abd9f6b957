"""What travels between processes: envelopes of (sender, receiver, message), and the token.

The codec is pickle (protocol 5) of the protocol dataclasses; the engine never sees it. Large
buffers of objects bound for a node's store do not travel in the envelope: they go by shared
memory and the envelope names the segment (``shm``); unpickling maps it back. Pickles are
code, so every call carries the cluster's token in its metadata and a process that does not
present it is refused before anything is unpickled.

Three methods on one generic gRPC service, no generated code:

``Attach``  a local process (worker or driver) opens one bidirectional stream to its node;
            its first envelope names it; then each side streams envelopes for the other.
``Info``    one call: the node's id and endpoint and its head's, as JSON (how a node or driver
            on another machine, holding only the token, learns whom it joins).
``Send``    a node streams envelopes to another node, and a process to another process of
            its node (client stream). Every process serves ``Send`` on a local socket whose
            name follows from its address (``local_endpoint``), so a driver's task goes
            straight to the worker that runs it, and the reply straight back: one hop each
            way instead of two through the node.

Each gRPC message is a *batch*: the envelopes that queued for one stream while the previous
message was being written (``Outbox``), up to ``BATCH_BYTES``; a batch of one is that envelope
itself (``pack``). A gRPC message costs tens of
microseconds in Python; batching pays it once for a burst of calls.

Between nodes an ``ObjectTransfer`` of a large object is a stream of ``shm.Chunk``s followed by
the envelope that names them (``encode_for_node``); each chunk is read from the object only
when its turn on the stream comes, so gRPC's flow control paces a transfer and no whole copy
of it waits in memory. The receiving node writes each chunk into its copy as it is decoded,
before the next envelope is (``unpack`` decodes in order).
"""
from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections import deque

import grpc

from transports.grpc import shm

SERVICE = "rayref.Node"
ATTACH = f"/{SERVICE}/Attach"
SEND = f"/{SERVICE}/Send"
INFO = f"/{SERVICE}/Info"
TOKEN_KEY = "rayref-token"


BATCH_BYTES = shm.CHUNK_BYTES
"""A gRPC message carries queued envelopes up to about this many bytes (one larger envelope goes alone)."""


def encode(src: str, to: str, msg) -> bytes:
    return shm.dumps((src, to, msg))


def encode_for_node(src: str, to: str, msg) -> list:
    """What carries an envelope to another node: the chunks of a transfer's large buffers (as
    makers, see ``Outbox``), then the envelope."""
    streamed: list = []
    envelope = shm.dumps((src, to, msg), chunked=streamed)
    items = [lambda make=make: pickle.dumps((src, to, make()), protocol=5)
             for key, buffer in streamed for make in shm.chunks(key, buffer)]
    items.append(envelope)
    return items


def decode(data: bytes):
    """The envelope; a Blob sent by shared memory comes back mapped (``shm._rebuild_blob``)."""
    return pickle.loads(data)


def pack(batch: list[bytes]) -> bytes:
    """One gRPC message: a lone envelope as it is (a sync call's, a transfer's chunk: not copied
    again), several as a pickled list of them."""
    return batch[0] if len(batch) == 1 else pickle.dumps(batch, protocol=5)


def unpack(data: bytes):
    """The envelopes of one gRPC message, decoded one by one, in order."""
    loaded = pickle.loads(data)
    if type(loaded) is not list:  # a lone envelope, (src, to, msg)
        yield loaded
        return
    for envelope in loaded:
        yield decode(envelope)


class Outbox:
    """Envelopes waiting for one stream; ``batches()`` yields them as gRPC messages (loop thread only).

    An item is an encoded envelope, or a function that encodes it when its batch is made (a
    transfer's chunk). ``unwritten`` counts those not yet written; ``written`` (if given) is
    called when a batch has been written, i.e. when gRPC asks for the next one.
    """

    def __init__(self, written=None):
        self.items: deque = deque()
        self.ready = asyncio.Event()
        self.closed = False
        self.unwritten = 0
        self.written = written

    def put(self, envelope) -> None:
        self.items.append(envelope)
        self.unwritten += 1
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    def take(self, limit: int | None = None) -> list[bytes]:
        """The items queued (the first ones up to ``limit`` bytes, at least one), encoded."""
        batch, size = [], 0
        while self.items and (limit is None or not batch or size < limit):
            item = self.items.popleft()
            if not isinstance(item, bytes):
                item = item()
            batch.append(item)
            size += len(item)
        return batch

    async def batches(self):
        while True:
            await self.ready.wait()
            self.ready.clear()
            if self.closed:
                return
            if self.items:
                yield pack(self.take(BATCH_BYTES))
                self.unwritten = len(self.items)
                if self.items:
                    self.ready.set()
                if self.written is not None:
                    self.written()


async def read_until(closing: asyncio.Event, request_iterator, handle) -> bool:
    """Give each message of a client stream to ``handle`` until the stream ends (True, or its error)
    or ``closing`` is set (False). A handler that returns when its server is closing is not
    cancelled by the server's stop, which would print a traceback for every open stream."""
    async def read():
        async for data in request_iterator:
            handle(data)

    reader, closed = asyncio.ensure_future(read()), asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({reader, closed}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()
            return True
        return False
    finally:
        reader.cancel()
        closed.cancel()


def local_endpoint(token: str, address: str) -> str:
    """Where the process ``address`` of a cluster serves ``Send`` on this machine (no file to clean up)."""
    return f"unix-abstract:rayref-{hashlib.sha256(token.encode()).hexdigest()[:12]}-{address}"


def identity(data: bytes) -> bytes:
    return data


def metadata(token: str) -> tuple:
    return ((TOKEN_KEY, token),)


def authorized(context, token: str) -> bool:
    """True if the call carries the cluster's token; else the call's status says why it is refused.

    The handler then ends without reading anything (aborting from inside a streaming handler
    can lose the reason).
    """
    if dict(context.invocation_metadata()).get(TOKEN_KEY) == token:
        return True
    context.set_code(grpc.StatusCode.UNAUTHENTICATED)
    context.set_details("rayref: missing or wrong cluster token; pass the token of this cluster "
                        "(its session directory's 'token' file) to connect.")
    return False


OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=OPTIONS)
