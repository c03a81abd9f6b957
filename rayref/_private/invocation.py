"""Turning a ``.remote(...)`` call into a task spec: arguments, dependencies, large-argument puts.

Top-level ``ObjectRef`` arguments become *dependencies*: the task runs once they are ready and
sees their values. In the pickled arguments they are placeholders that the executor resolves
while unpickling. Refs nested inside containers stay refs. An argument whose pickle exceeds
the inline threshold is put in the object store first and passed by reference, as Ray does.
"""
from __future__ import annotations

import contextvars

from rayref._private import serialization
from rayref.core import protocol as p
from rayref.object_ref import ObjectRef

_resolved: contextvars.ContextVar = contextvars.ContextVar("rayref_resolved_args", default=None)


class Dependency:
    """Stands for the value of the ``index``-th dependency inside pickled arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (_resolve_dependency, (self.index,))


def _resolve_dependency(index: int):
    return _resolved.get()[index]


_NO_ARGS: list = []


def _no_args() -> p.Blob:
    """The blob of a call without arguments, made once (a Blob never changes)."""
    if not _NO_ARGS:
        _NO_ARGS.append(serialization.serialize(((), {})))
    return _NO_ARGS[0]


def encode_args(ctx, name: str, args: tuple, kwargs: dict):
    """(args blob, dependencies, refs kept alive until submission) for a call of ``name``."""
    if not args and not kwargs:
        return _no_args(), (), []
    deps: list[p.RefInfo] = []
    keep: list[ObjectRef] = []

    def swap(value):
        if isinstance(value, ObjectRef):
            keep.append(value)
            deps.append(value.info())
            return Dependency(len(deps) - 1)
        return value

    call_args = [swap(a) for a in args]
    call_kwargs = {k: swap(v) for k, v in kwargs.items()}
    blob = _serialize_args(name, call_args, call_kwargs, defer_large=True)  # sizes first, copies once known
    threshold = ctx.cw.config.inline_threshold
    if blob.nbytes <= threshold:
        serialization.copy_deferred(blob)  # the spec keeps it (retries): it must not alias the caller's values
        return blob, tuple(deps), keep
    for i, value in enumerate(call_args):
        if not isinstance(value, Dependency) and _size(value) > threshold:
            call_args[i] = swap(put_value(ctx, value))
    for k, value in call_kwargs.items():
        if not isinstance(value, Dependency) and _size(value) > threshold:
            call_kwargs[k] = swap(put_value(ctx, value))
    return _serialize_args(name, call_args, call_kwargs), tuple(deps), keep


def _size(value) -> int:
    return serialization.serialize(value, defer_large=True).nbytes


def _serialize_args(name: str, args: list, kwargs: dict, defer_large: bool = False) -> p.Blob:
    try:
        return serialization.serialize((tuple(args), kwargs), defer_large=defer_large)
    except Exception as error:
        for value in list(args) + list(kwargs.values()):
            try:
                serialization.serialize(value)
            except Exception as inner:
                raise TypeError(f"Could not pass an argument to {name}: "
                                f"{serialization.describe_unserializable(value, inner)}") from inner
        raise TypeError(f"Could not serialize the arguments of {name}: {error}") from error


def decode_args(blob: p.Blob, values: list):
    token = _resolved.set(values)
    try:
        return serialization.deserialize(blob)
    finally:
        _resolved.reset(token)


def put_value(ctx, value) -> ObjectRef:
    if isinstance(value, ObjectRef):
        raise TypeError("Calling put() on an ObjectRef is not allowed: the value already lives in the "
                        "object store. Pass the ObjectRef itself, or put the value it stands for.")
    try:
        blob = serialization.serialize(value, defer_large=True)
    except Exception as error:
        raise TypeError(f"put() failed: {serialization.describe_unserializable(value, error)}") from error
    if blob.nbytes <= ctx.cw.config.inline_threshold:
        serialization.copy_deferred(blob)  # small: this process keeps it
    try:  # large: sent to the node now; the transport copies it as it encodes it (gRPC: into shared memory)
        waiter = ctx.call(ctx.cw.put, blob)
    finally:
        serialization.copy_deferred(blob)  # whatever the transport did not copy (the sim): before put returns
    info = waiter.value
    ref = ObjectRef(info.object_id, info.owner, ctx.cw)
    if not waiter.done:
        ctx.block(waiter)
    return ref


def return_refs(ctx, spec: p.TaskSpec) -> list[ObjectRef]:
    return [ObjectRef(oid, ctx.cw.address, ctx.cw) for oid in spec.return_ids]


def new_task_id(ctx) -> str:
    return ctx.cw.new_id("t")


def _parent_task_id(ctx) -> str:
    task = ctx.current_task()
    return task.spec.task_id if task is not None else ""


def _inherited(ctx, env_vars) -> tuple[tuple[str, tuple], str]:
    """(env vars, namespace) of a new task: the parent task's (the driver's job's), then its own."""
    parent = ctx.current_task()
    base_env = dict(parent.spec.env_vars) if parent is not None else dict(ctx.job_env)
    base_env.update(env_vars)
    namespace = parent.spec.namespace if parent is not None and parent.spec.namespace else ctx.namespace
    return tuple(sorted(base_env.items())), namespace


def base_spec(ctx, *, kind: p.TaskKind, name: str, args_blob: p.Blob, deps, num_returns: int, **fields) -> p.TaskSpec:
    if kind != p.TaskKind.ACTOR_TASK:
        fields["env_vars"], fields["namespace"] = _inherited(ctx, fields.get("env_vars", ()))
    task_id = new_task_id(ctx)
    return p.TaskSpec(task_id=task_id, kind=kind, name=name, owner=ctx.cw.address, owner_node=ctx.cw.node_id,
                      args=args_blob, dependencies=deps,
                      return_ids=(f"{task_id}.r0",) if num_returns == 1 else
                      tuple(f"{task_id}.r{i}" for i in range(num_returns)),
                      parent_task_id=_parent_task_id(ctx), **fields)
