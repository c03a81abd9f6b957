"""Running user code for one task, the same in every transport.

``bind`` loads the function (or the actor's method) and unpickles the arguments with their
dependencies resolved; ``finished``/``failed`` serialize the outcome into a ``TaskExecuted``
message for the core worker. The transport decides *where* this runs (a greenlet in sim, a
thread of a worker process over gRPC) and what surrounds it (virtual time, environment).
"""
from __future__ import annotations

import inspect
import os
import traceback
import types

import cloudpickle

from rayref import exceptions
from rayref._private import invocation, serialization, worker
from rayref.core import protocol as p


class ArgumentError(Exception):
    """An argument's object is an error; the task fails with it without running."""

    def __init__(self, blob: p.Blob):
        self.blob = blob


def load_function(cache: dict, spec: p.TaskSpec):
    function = cache.get(spec.function_id)
    if function is None:
        function = cache[spec.function_id] = cloudpickle.loads(spec.function)
    return function


def bind(process, spec: p.TaskSpec, arg_blobs):
    """(callable, args, kwargs) for ``spec`` in ``process``."""
    for blob in arg_blobs:
        if blob.is_error:
            raise ArgumentError(blob)
    token = worker.register_eagerly.set(False)
    try:
        values = [serialization.deserialize(b) for b in arg_blobs]
        args, kwargs = invocation.decode_args(spec.args, values)
    finally:
        worker.register_eagerly.reset(token)
    if spec.kind == p.TaskKind.NORMAL:
        return load_function(process.functions, spec), args, kwargs
    if spec.kind == p.TaskKind.ACTOR_CREATION:
        cls = load_function(process.functions, spec)
        return (lambda *a, **k: process.set_actor(cls(*a, **k))), args, kwargs
    return actor_method(process.actor, spec.method), args, kwargs


def actor_method(instance, name: str):
    """The method as defined on the class, bound to the instance (instance attributes never shadow it)."""
    cls = type(instance)
    raw = cls.__dict__.get(name)
    if type(raw) is types.FunctionType:  # the common case: a plain method of the class itself
        return raw.__get__(instance, cls)
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, staticmethod | classmethod) or raw is None:
        return getattr(cls, name) if raw is not None else getattr(instance, name)
    return raw.__get__(instance, cls)


def finished(spec: p.TaskSpec, result, defer_large: bool = False) -> p.TaskExecuted:
    """The outcome of a task that returned ``result``. With ``defer_large`` its large buffers stay
    views of the result (``serialization``): the transport copies them once as it sends them
    (gRPC: straight into shared memory), then calls ``settled`` on the outcome."""
    count = len(spec.return_ids)
    if spec.kind == p.TaskKind.ACTOR_CREATION:
        values = [None]
    elif count == 1:
        values = [result]
    elif count == 0:
        values = []
    else:
        values = list(result) if isinstance(result, (tuple, list)) else None
        if values is None or len(values) != count:
            got = len(values) if values is not None else type(result).__name__
            error = ValueError(f"Task {spec.name} declared num_returns={count} but returned {got} values.")
            return failed(spec, error, retryable=False)
    try:
        blobs = tuple(serialization.serialize(v, defer_large=defer_large) for v in values)
    except Exception as error:
        text = serialization.describe_unserializable(result, error)
        return failed(spec, TypeError(f"Could not store the return value of {spec.name}: {text}"), retryable=False)
    return p.TaskExecuted(task_id=spec.task_id, returns=blobs)


def settled(outcome: p.TaskExecuted) -> None:
    """After the core worker handled ``outcome``: copy what the transport did not (no Blob may
    keep aliasing the result, which user code may change later)."""
    for blob in outcome.returns:
        serialization.copy_deferred(blob)


def failed(spec: p.TaskSpec, error: BaseException, retryable: bool | None = None) -> p.TaskExecuted:
    if isinstance(error, ArgumentError):
        return p.TaskExecuted(task_id=spec.task_id, returns=(error.blob,) * max(1, len(spec.return_ids)))
    if isinstance(error, KeyboardInterrupt):
        return p.TaskExecuted(task_id=spec.task_id, cancelled=True)
    if retryable is None:
        retryable = _retryable(spec, error)
    blob = error_blob(spec, error)
    return p.TaskExecuted(task_id=spec.task_id, returns=(blob,) * max(1, len(spec.return_ids)),
                          retryable_error=retryable)


def error_blob(spec: p.TaskSpec, error: BaseException) -> p.Blob:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    task_error = exceptions.RayTaskError(spec.name, text, error, os.getpid(), spec.owner_node)
    try:
        return serialization.serialize(task_error, is_error=True)
    except Exception:
        fallback = exceptions.RayTaskError(spec.name, text, exceptions.RaySystemError(repr(error)), os.getpid())
        return serialization.serialize(fallback, is_error=True)


def _retryable(spec: p.TaskSpec, error: BaseException) -> bool:
    if not isinstance(error, Exception):
        return False
    if spec.retry_exceptions is True:
        return True
    return bool(spec.retry_exceptions) and isinstance(error, tuple(spec.retry_exceptions))


def raise_if_error(blob: p.Blob):
    """The value of ``blob``, or raise the error it holds."""
    if not blob.is_error:
        return serialization.deserialize(blob)
    if blob.system_error:
        raise exceptions.from_system_error(*blob.system_error)
    error = serialization.deserialize(blob)
    if isinstance(error, exceptions.RayTaskError):
        raise error.as_instanceof_cause()
    raise error
