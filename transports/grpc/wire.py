"""What travels between processes: envelopes of (sender, receiver, message), and the token.

The codec is pickle (protocol 5) of the protocol dataclasses; the engine never sees it. Large
buffers of objects bound for a node's store do not travel in the envelope: they go by shared
memory and the envelope names the segment (``shm``); unpickling maps it back. Pickles are
code, so every call carries the cluster's token in its metadata and a process that does not
present it is refused before anything is unpickled.

Two methods on one generic gRPC service, no generated code:

``Attach``  a local process (worker or driver) opens one bidirectional stream to its node;
            its first envelope names it; then each side streams envelopes for the other.
``Send``    a node streams envelopes to another node (client stream).
"""
from __future__ import annotations

import pickle

import grpc

from transports.grpc import shm

SERVICE = "rayref.Node"
ATTACH = f"/{SERVICE}/Attach"
SEND = f"/{SERVICE}/Send"
TOKEN_KEY = "rayref-token"


def encode(src: str, to: str, msg) -> bytes:
    return shm.dumps((src, to, msg))


def decode(data: bytes):
    """The envelope; a Blob sent by shared memory comes back mapped (``shm._rebuild_blob``)."""
    return pickle.loads(data)


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


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=[("grpc.max_send_message_length", -1),
                                                        ("grpc.max_receive_message_length", -1)])
