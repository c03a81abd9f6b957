"""Values to blobs and back: cloudpickle with pickle protocol 5 out-of-band buffers.

Buffers (numpy arrays and the like) are copied once into immutable ``bytes``, so a stored
object can never change under its readers, and arrays read back from it are read-only, as
in Ray. While pickling, every ``ObjectRef`` met is recorded as *contained* in the blob; the
engine uses that to keep nested references alive.
"""
from __future__ import annotations

import contextvars
import pickle

import cloudpickle

from rayref.core.protocol import Blob, RefInfo

_contained: contextvars.ContextVar = contextvars.ContextVar("rayref_contained", default=None)


def note_contained(info: RefInfo) -> None:
    found = _contained.get()
    if found is not None and info.object_id not in found:
        found[info.object_id] = info


def serialize(value, *, is_error: bool = False) -> Blob:
    buffers: list = []
    found: dict = {}
    token = _contained.set(found)
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    finally:
        _contained.reset(token)
    copies = tuple(bytes(b.raw()) for b in buffers)
    nbytes = len(data) + sum(len(c) for c in copies)
    return Blob(data=data, buffers=copies, nbytes=nbytes, contained=tuple(found.values()), is_error=is_error)


def deserialize(blob: Blob):
    return pickle.loads(blob.data, buffers=blob.buffers)


def describe_unserializable(value, error: Exception) -> str:
    return (f"Could not serialize {type(value).__name__} object {_short(value)}: {type(error).__name__}: {error}. "
            f"Values sent to tasks and actors, returned from them or put in the object store must be picklable "
            f"(by cloudpickle); create such a value inside the task instead, or pass what is needed to rebuild it.")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
