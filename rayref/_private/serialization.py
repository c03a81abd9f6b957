"""Values to blobs and back: cloudpickle with pickle protocol 5 out-of-band buffers.

A stored object can never change under its readers, and arrays read back from it are
read-only, as in Ray. So every buffer (numpy arrays and the like) is copied exactly once out
of the value: by default here, into immutable ``bytes``.

``put`` of a large value asks for that copy to be *deferred* (``defer_large=True``): each
buffer of at least ``LARGE`` bytes stays in the Blob as the ``pickle.PickleBuffer`` the
pickler gave out, a view of the caller's own memory. Whoever sends such a Blob must copy it
(``is_deferred``): the gRPC codec copies it straight into a shared-memory segment and swaps
the Blob's buffer for the read-only mapping (``transports/grpc/shm.py``), so a 100 MiB put is
one copy. Before ``put`` returns, ``copy_deferred`` copies into ``bytes`` whatever is still
deferred (the sim transport, or shared memory unavailable), so no Blob outlives the call
aliasing user memory. A gRPC worker defers a task's return values the same way
(``executor.finished(defer_large=True)``, then ``executor.settled``); task arguments kept for
retries, and everything in sim, are copied here.

While pickling, every ``ObjectRef`` met is recorded as *contained* in the blob; the engine
uses that to keep nested references alive.
"""
from __future__ import annotations

import contextvars
import pickle

import cloudpickle

from rayref.core.protocol import Blob, RefInfo

LARGE = 64 * 1024
"""Buffers at least this large may be deferred (the gRPC codec's shared-memory threshold)."""

_contained: contextvars.ContextVar = contextvars.ContextVar("rayref_contained", default=None)


def note_contained(info: RefInfo) -> None:
    found = _contained.get()
    if found is not None and info.object_id not in found:
        found[info.object_id] = info


_ATOMIC = frozenset({type(None), bool, int, float, str, bytes})
"""Types that hold no buffer and no ObjectRef: plain pickle writes them as cloudpickle would."""


def serialize(value, *, is_error: bool = False, defer_large: bool = False) -> Blob:
    """``value`` as a Blob; with ``defer_large`` its large buffers are not copied yet (see the module doc)."""
    if type(value) in _ATOMIC:  # the common small result, a quarter of the cost
        data = pickle.dumps(value, protocol=5)
        return Blob(data=data, nbytes=len(data), is_error=is_error)
    buffers: list = []
    found: dict = {}
    token = _contained.set(found)
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    finally:
        _contained.reset(token)
    kept = tuple(b if defer_large and _size(b) >= LARGE else bytes(b.raw()) for b in buffers)
    nbytes = len(data) + sum(_size(b) for b in kept)
    return Blob(data=data, buffers=kept, nbytes=nbytes, contained=tuple(found.values()), is_error=is_error)


def is_deferred(buffer) -> bool:
    """True for a buffer of a Blob that is still a view of the value's memory: its sender must copy it."""
    return isinstance(buffer, pickle.PickleBuffer)


def copy_deferred(blob: Blob) -> None:
    """Copy the Blob's deferred buffers into ``bytes``, in place: it no longer aliases the value."""
    if any(is_deferred(b) for b in blob.buffers):
        copies = tuple(bytes(b.raw()) if is_deferred(b) else b for b in blob.buffers)
        object.__setattr__(blob, "buffers", copies)


def deserialize(blob: Blob):
    return pickle.loads(blob.data, buffers=blob.buffers)


def describe_unserializable(value, error: Exception) -> str:
    return (f"Could not serialize {type(value).__name__} object {_short(value)}: {type(error).__name__}: {error}. "
            f"Values sent to tasks and actors, returned from them or put in the object store must be picklable "
            f"(by cloudpickle); create such a value inside the task instead, or pass what is needed to rebuild it.")


def _size(buffer) -> int:
    return buffer.raw().nbytes if is_deferred(buffer) else len(buffer)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
