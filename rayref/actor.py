"""``@remote`` classes: ``Cls.remote(...)`` creates an actor and returns its ``ActorHandle``.

A handle carries a hidden ``ObjectRef`` owned by the actor's creator; the reference counting
that keeps objects alive keeps the actor alive too. When the last handle anywhere is gone,
the creator sends the actor a terminate call after every call it already submitted (Ray's
out-of-scope termination). Detached actors live until killed or until the cluster stops.
"""
from __future__ import annotations

import inspect

from rayref._private import invocation, options as opt, worker
from rayref._private.remote_base import Remote
from rayref.core import protocol as p
from rayref.object_ref import ObjectRef


def method(*args, **kwargs):
    """``@ray.method(num_returns=n)`` on an actor method."""
    opt.validate(kwargs, opt.METHOD_OPTIONS, "actor methods")

    def mark(function):
        function.__rayref_num_returns__ = kwargs.get("num_returns", 1)
        return function

    if args:
        raise TypeError("@ray.method takes keyword arguments only, e.g. @ray.method(num_returns=2).")
    return mark


def _methods_of(cls) -> tuple[tuple[str, int], ...]:
    found = []
    for name, member in inspect.getmembers(cls, lambda m: inspect.isfunction(m) or inspect.ismethod(m)):
        if name.startswith("__") and name.endswith("__"):
            continue
        found.append((name, getattr(member, "__rayref_num_returns__", 1)))
    return tuple(found)


def _is_async(cls) -> bool:
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
               for _, m in inspect.getmembers(cls, inspect.isfunction))


class ActorClass(Remote):
    TABLE = opt.ACTOR_OPTIONS
    WHAT = "actors"

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
                        f"use '{self.__name__}.remote()'.")

    def remote(self, *args, **kwargs) -> ActorHandle:
        ctx = worker.current()
        o = self._options
        name, namespace = o.get("name") or "", o.get("namespace") or ctx.namespace
        if name and o.get("get_if_exists"):
            existing = _lookup(ctx, name, namespace)
            if existing is not None:
                return existing
        handle = self._create(ctx, args, kwargs, name, namespace)
        if name:
            waiter = ctx.call(ctx.cw.await_registration, handle._actor_id)
            ctx.block(waiter)
            channel = waiter.value
            if channel.state.value == "DEAD" and "already taken" in channel.death_cause:
                if o.get("get_if_exists"):
                    existing = _lookup(ctx, name, namespace)
                    if existing is not None:
                        return existing
                raise ValueError(f"{channel.death_cause}. Pick another name, use ray.get_actor({name!r}), "
                                 f"or pass get_if_exists=True.")
        return handle

    def _create(self, ctx, args, kwargs, name: str, namespace: str) -> ActorHandle:
        o = self._options
        function_id, function = self._pickle()
        blob, deps, keep = invocation.encode_args(ctx, self.__name__, args, kwargs)
        is_async = _is_async(self._target)
        default_concurrency = ctx.cw.config.async_actor_concurrency if is_async else 1
        methods = _methods_of(self._target)
        actor = p.ActorOptions(
            max_restarts=o.get("max_restarts", 0), max_task_retries=o.get("max_task_retries", 0),
            max_concurrency=o.get("max_concurrency") or default_concurrency, is_async=is_async,
            name=name, namespace=namespace, detached=o.get("lifetime") == "detached", method_names=methods)
        spec = invocation.base_spec(
            ctx, kind=p.TaskKind.ACTOR_CREATION, name=self.__name__, args_blob=blob, deps=deps, num_returns=1,
            function_id=function_id, function=function, resources=opt.actor_resources(o),
            strategy=opt.strategy_of(o), env_vars=opt.env_vars_of(o), actor_id=ctx.cw.new_id("a"), actor=actor)
        ctx.call(ctx.cw.create_actor, spec)
        del keep
        handle_ref = ObjectRef(spec.return_ids[0], ctx.cw.address, ctx.cw)
        return ActorHandle(spec.actor_id, self.__name__, methods, actor.max_task_retries, handle_ref)


def _lookup(ctx, name: str, namespace: str) -> ActorHandle | None:
    waiter = ctx.call(ctx.cw.query, "named_actor", name, namespace)
    ctx.block(waiter)
    info = waiter.value
    if info is None:
        return None
    actor = info.spec.actor
    return ActorHandle(info.actor_id, info.class_name, actor.method_names, actor.max_task_retries, None)


class ActorHandle:
    def __init__(self, actor_id: str, class_name: str, methods, max_task_retries: int, handle_ref):
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = dict(methods)
        self._max_task_retries = max_task_retries
        self._handle_ref = handle_ref

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"Actor {self.__dict__.get('_class_name')} has no method {name!r}; "
                             f"its methods are: {', '.join(sorted(methods)) or '(none)'}.")

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self):
        return (ActorHandle, (self._actor_id, self._class_name, tuple(self._methods.items()),
                              self._max_task_retries, self._handle_ref))


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def options(self, **overrides) -> ActorMethod:
        opt.validate(overrides, opt.METHOD_OPTIONS, "actor methods")
        return ActorMethod(self._handle, self._name, overrides.get("num_returns", self._num_returns))

    def remote(self, *args, **kwargs):
        ctx = worker.current()
        handle = self._handle
        label = f"{handle._class_name}.{self._name}"
        blob, deps, keep = invocation.encode_args(ctx, label, args, kwargs)
        spec = invocation.base_spec(ctx, kind=p.TaskKind.ACTOR_TASK, name=label, args_blob=blob, deps=deps,
                                    num_returns=self._num_returns, actor_id=handle._actor_id, method=self._name,
                                    max_retries=handle._max_task_retries)
        ctx.call(ctx.cw.submit_actor_task, spec)
        del keep
        refs = invocation.return_refs(ctx, spec)
        return refs[0] if self._num_returns == 1 else (refs if self._num_returns else None)

    def __call__(self, *args, **kwargs):
        """Calling the method directly runs it remotely and returns its result (``get`` of ``.remote``)."""
        from rayref import api
        result = self.remote(*args, **kwargs)
        return api.get(result) if result is not None else None
