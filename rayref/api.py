"""The public API: Ray Core's functions, by Ray's names, over whichever transport is connected."""
from __future__ import annotations

import itertools
import logging
import os

from rayref import exceptions
from rayref._private import executor, invocation, options as opt, worker
from rayref.actor import ActorClass, ActorHandle, _lookup
from rayref.core.resources import Resources
from rayref.object_ref import ObjectRef
from rayref.remote_function import RemoteFunction

log = logging.getLogger("rayref")

TRANSPORTS = ("sim", "grpc")
_IGNORED_INIT_OPTIONS = ("log_to_driver", "include_dashboard", "logging_level", "configure_logging",
                         "dashboard_host", "dashboard_port")


def init(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
         resources: dict | None = None, object_store_memory: int | None = None, namespace: str | None = None,
         runtime_env: dict | None = None, ignore_reinit_error: bool = False, transport: str | None = None,
         seed: int | None = None, **unknown):
    """Start (or connect to) a cluster and connect this process to it as the driver."""
    bad = sorted(set(unknown) - set(_IGNORED_INIT_OPTIONS))
    if bad:
        raise TypeError(f"init() got unknown keyword argument(s) {bad}. rayref's init takes address, num_cpus, "
                        f"num_gpus, resources, object_store_memory, namespace, runtime_env, ignore_reinit_error, "
                        f"transport and seed.")
    if worker.transport() is not None:
        if ignore_reinit_error:
            return worker.transport().context_info()
        raise RuntimeError("Maybe you called ray.init twice by accident? This error can be suppressed by passing "
                           "in 'ignore_reinit_error=True' or by calling 'ray.shutdown()' prior to 'ray.init()'.")
    address = address or os.environ.get("RAYREF_ADDRESS") or None
    kind = transport or os.environ.get("RAYREF_TRANSPORT") or "grpc"
    if kind not in TRANSPORTS:
        raise ValueError(f"Unknown transport {kind!r}; choose one of {TRANSPORTS} (argument transport= or "
                         f"environment variable RAYREF_TRANSPORT).")
    if runtime_env is not None:
        opt.validate({"runtime_env": runtime_env}, opt.TASK_OPTIONS, "init()")
    if resources is not None:
        opt.validate({"resources": resources}, opt.TASK_OPTIONS, "init()")
    seed = int(seed if seed is not None else os.environ.get("RAYREF_SEED", 0))
    if kind == "grpc" and address:
        from transports.grpc.client import connect
        worker.set_transport(connect(address, namespace=namespace or "anonymous",
                                     job_env=(runtime_env or {}).get("env_vars")))
        return worker.transport().context_info()
    if kind == "grpc":
        from transports.grpc.client import start_local
        worker.set_transport(start_local(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                         object_store_memory=object_store_memory, namespace=namespace or "anonymous",
                                         job_env=(runtime_env or {}).get("env_vars")))
        return worker.transport().context_info()
    from sim.cluster import Cluster
    if address is not None:
        log.warning("init(address=%r): the sim transport runs its own cluster in this process; address is ignored.",
                    address)
    cluster = Cluster(seed=seed)
    cluster.add_node(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                     object_store_memory=object_store_memory)
    cluster.connect(namespace=namespace, runtime_env=runtime_env, owns_cluster=True)
    return worker.transport().context_info()


def shutdown() -> None:
    """Disconnect the driver and stop the cluster it started."""
    transport = worker.transport()
    if transport is not None:
        worker.set_transport(None)
        transport.shutdown()


def is_initialized() -> bool:
    return worker.transport() is not None


def remote(*args, **kwargs):
    """``@remote`` or ``@remote(**options)`` on a function or class."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("The @ray.remote decorator takes either no arguments or keyword options, e.g. "
                        "@ray.remote(num_cpus=2).")
    return lambda target: _make_remote(target, kwargs)


def _make_remote(target, options: dict):
    if isinstance(target, type):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@ray.remote applies to functions and classes, not {type(target).__name__}.")


def _check_refs(object_refs, what: str) -> list[ObjectRef]:
    if isinstance(object_refs, (list, tuple)) and all(map(isinstance, object_refs, itertools.repeat(ObjectRef))):
        return list(object_refs)
    raise ValueError(f"'object_refs' of {what} must be an ObjectRef or a list of ObjectRefs, got "
                     f"{_describe(object_refs)}. Pass the ObjectRef returned by .remote() or put().")


def _describe(value) -> str:
    if isinstance(value, (list, tuple)):
        bad = next((v for v in value if not isinstance(v, ObjectRef)), None)
        return f"a {type(value).__name__} containing {type(bad).__name__} {bad!r}"
    return f"{type(value).__name__} {value!r}"


def get(object_refs, *, timeout: float | None = None):
    """The values of ``object_refs`` (one ref or a list), blocking until they are ready."""
    single = isinstance(object_refs, ObjectRef)
    refs = [object_refs] if single else _check_refs(object_refs, "get()")
    ctx = worker.current()
    waiter = ctx.call(ctx.cw.begin_get, [r.info() for r in refs], timeout)
    if not waiter.done:
        ctx.block(waiter)
    if waiter.timed_out:
        raise exceptions.GetTimeoutError(f"Get timed out: some object(s) not ready after {timeout} seconds.")
    blobs = ctx.call(ctx.cw.results, waiter)
    values = [executor.raise_if_error(b) for b in blobs]
    return values[0] if single else values


def put(value) -> ObjectRef:
    """Store ``value`` in the object store; the caller owns it."""
    return invocation.put_value(worker.current(), value)


def wait(object_refs, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True):
    """(ready, not_ready): the first ``num_returns`` ready refs, both lists in input order."""
    refs = _check_refs(object_refs, "wait()")
    ids = tuple([r._id for r in refs])
    wanted = set(ids)
    if len(wanted) != len(ids):
        raise ValueError("Wait requires a list of unique object refs; remove the duplicates.")
    if not isinstance(num_returns, int) or isinstance(num_returns, bool) or not 1 <= num_returns <= len(refs):
        if refs or num_returns != 1:
            raise ValueError(f"num_returns={num_returns!r} must be an int between 1 and the number of refs "
                             f"({len(refs)}).")
    if not refs:
        return [], []
    ctx = worker.current()
    waiter = ctx.call(ctx.cw.begin_get, _InfosOf(refs), timeout, fetch_local, num_returns, ids, wanted)
    if not waiter.done:
        ctx.block(waiter)
    return _split(refs, ids, ctx.call(ctx.cw.ready_ids, waiter, num_returns))


class _InfosOf:
    """The RefInfos of ``refs``, made only if the engine goes through them (a wait on objects this
    process computes needs their ids alone)."""

    __slots__ = ("refs",)

    def __init__(self, refs: list):
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self):
        return (r._info for r in self.refs)


def _split(refs: list, ids: tuple, ready_ids: list) -> tuple[list, list]:
    """(ready, not ready), both in input order; ``ready_ids`` are in input order. (Few ready of many
    is the common case: found by index and sliced around, not tested one by one.)"""
    if len(ready_ids) == len(refs):
        return refs, []
    if len(ready_ids) > 16:
        ready_set = set(ready_ids)
        return ([r for r, oid in zip(refs, ids) if oid in ready_set],
                [r for r, oid in zip(refs, ids) if oid not in ready_set])
    ready, not_ready, start = [], [], 0
    for object_id in ready_ids:
        at = ids.index(object_id, start)
        ready.append(refs[at])
        not_ready += refs[start:at]
        start = at + 1
    not_ready += refs[start:]
    return ready, not_ready


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that creates ``object_ref`` (queued: dropped; running: interrupted or, with force, killed)."""
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() takes the ObjectRef returned by .remote(), got {_describe(object_ref)}.")
    ctx = worker.current()
    task = ctx.call(ctx.cw.tasks.get, object_ref.hex().rsplit(".r", 1)[0])
    if task is not None and force and task.spec.actor_id:
        raise ValueError("force=True is not supported for actor tasks; use ray.kill(actor) to stop the actor.")
    ctx.call(ctx.cw.cancel, object_ref.hex(), force, recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill the actor at once (pending calls fail with ActorDiedError); may restart it if no_restart=False."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"ray.kill() only supports actors; got {_describe(actor)}. To stop a task, use ray.cancel().")
    ctx = worker.current()
    ctx.call(ctx.cw.kill_actor, actor._actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name, a non-empty string.")
    ctx = worker.current()
    handle = _lookup(ctx, name, namespace if namespace is not None else ctx.namespace)
    if handle is None:
        raise ValueError(f"Failed to look up actor with name {name!r}. This could be because 1. you are trying "
                         f"to look up a named actor you didn't create, 2. the named actor died, or 3. you did not "
                         f"use a namespace matching the namespace of the actor.")
    return handle


def nodes() -> list[dict]:
    """One dict per node, with Ray's keys."""
    ctx = worker.current()
    waiter = ctx.call(ctx.cw.query, "nodes")
    ctx.block(waiter)
    return [{"NodeID": n.node_id, "Alive": n.alive, "alive": n.alive, "NodeManagerAddress": n.address,
             "NodeName": n.address, "Resources": n.total.to_dict(), "IsHead": n.is_head,
             "Labels": dict(n.labels)} for n in waiter.value]


def _sum_resources(which: str) -> dict:
    ctx = worker.current()
    waiter = ctx.call(ctx.cw.query, "nodes")
    ctx.block(waiter)
    total = Resources()
    for node in waiter.value:
        if node.alive:
            total = total + getattr(node, which)
    return total.to_dict()


def cluster_resources() -> dict:
    return _sum_resources("total")


def available_resources() -> dict:
    return _sum_resources("available")


def get_gpu_ids() -> list[int]:
    task = worker.current().current_task()
    return list(task.gpu_ids) if task is not None else []


async def _await_ref(ref: ObjectRef):
    ctx = worker.current()
    await ctx.wait_async([ref.info()])
    return get(ref)
