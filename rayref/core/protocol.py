"""Every message the engine's components exchange, and every command they give a transport.

Rule 1: everything that crosses a component boundary is defined in this module, as a frozen
dataclass. Facts read as past tense (``LeaseGranted``, ``WorkerExited``); requests to a
peer read as nouns or imperatives (``RequestWorkerLease``, ``PushTask``); commands to the
transport are imperatives (``Send``, ``StartTimer``, ``StartWorker``, ``Wake``).

Rule 2: the engine never looks inside a ``Blob``. It reads its size and the object
references it contains, and hands it on. Serialization happens at the API edge.

Rule 3: addresses are plain strings. A node manager's address is its node id, a core
worker's address is its worker id, the control plane's address is ``CONTROL_PLANE``.

``specs/protocol.md`` documents each message with the flow it belongs to.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rayref.core.resources import Resources

CONTROL_PLANE = "control-plane"

frozen = dataclass(frozen=True, slots=True, kw_only=True)


# --------------------------------------------------------------------------- data


@frozen
class RefInfo:
    """An object reference as it travels: the object and the address of its owner."""

    object_id: str
    owner: str


@frozen
class Blob:
    """A serialized value. Opaque to the engine but for its size and contained refs."""

    data: bytes
    buffers: tuple = ()
    nbytes: int = 0
    contained: tuple[RefInfo, ...] = ()
    is_error: bool = False
    system_error: tuple[str, str] = ()
    """For errors the engine itself produces: (exception name in rayref.exceptions, message)."""


def system_error(kind: str, text: str) -> Blob:
    return Blob(data=b"", is_error=True, system_error=(kind, text))


class TaskKind(enum.Enum):
    NORMAL = "normal"
    ACTOR_CREATION = "actor_creation"
    ACTOR_TASK = "actor_task"


@frozen
class SchedulingStrategy:
    """DEFAULT (hybrid), SPREAD, or node affinity to ``node_id`` (``soft`` allows elsewhere)."""

    kind: str = "DEFAULT"
    node_id: str = ""
    soft: bool = False


DEFAULT_STRATEGY = SchedulingStrategy()
NO_RESOURCES = Resources()
"""Shared defaults of every spec (both immutable)."""


@frozen
class ActorOptions:
    max_restarts: int = 0
    max_task_retries: int = 0
    max_concurrency: int = 1
    is_async: bool = False
    name: str = ""
    namespace: str = ""
    detached: bool = False
    method_names: tuple[str, ...] = ()


@frozen
class TaskSpec:
    """Everything needed to run (and re-run) one task, actor creation or actor call."""

    task_id: str
    kind: TaskKind
    name: str
    owner: str
    owner_node: str
    function_id: str = ""
    function: bytes = b""
    args: Blob
    dependencies: tuple[RefInfo, ...] = ()
    return_ids: tuple[str, ...] = ()
    resources: Resources = NO_RESOURCES
    strategy: SchedulingStrategy = DEFAULT_STRATEGY
    max_retries: int = 0
    retry_exceptions: bool | tuple = False
    env_vars: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    parent_task_id: str = ""
    attempt: int = 0
    actor_id: str = ""
    method: str = ""
    actor: ActorOptions | None = None

    def scheduling_key(self) -> tuple:
        return (self.resources, self.strategy, self.function_id, self.env_vars)


@frozen
class ReturnValue:
    """One return of a finished task: inline, or stored in the object store of ``node_id``."""

    object_id: str
    blob: Blob | None = None
    node_id: str = ""
    nbytes: int = 0
    contained: tuple[RefInfo, ...] = ()


@frozen
class ResolvedArg:
    """A top-level argument as pushed to a worker: inline, or where it can be pulled from."""

    ref: RefInfo
    blob: Blob | None = None
    locations: tuple[str, ...] = ()


@frozen
class NodeInfo:
    node_id: str
    address: str
    total: Resources
    available: Resources
    alive: bool = True
    is_head: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    utilization: float = field(init=False, default=0.0, compare=False)
    """Derived: the most-used fraction of any resource (what the hybrid policy scores)."""

    def __post_init__(self):
        object.__setattr__(self, "utilization", self.available.utilization(self.total))


@frozen
class ActorInfo:
    actor_id: str
    state: str
    name: str = ""
    namespace: str = ""
    class_name: str = ""
    address: str = ""
    node_id: str = ""
    num_restarts: int = 0
    death_cause: str = ""
    spec: TaskSpec | None = None


class Message:
    """Base of every message. ``traced`` says whether it enters a run's trace digest."""

    __slots__ = ()
    traced = True

    def key(self) -> str:
        """The id this message is about, for traces and stories."""
        for name in ("task_id", "object_id", "lease_id", "actor_id", "worker_id", "node_id"):
            value = getattr(self, name, None)
            if value:
                return value
        return ""


# ------------------------------------------------------------ core worker <-> node manager


@frozen
class RequestWorkerLease(Message):
    lease_id: str
    requester: str
    spec: TaskSpec
    grant_or_reject: bool = False
    spilled: int = 0


@frozen
class LeaseGranted(Message):
    lease_id: str
    worker_id: str
    node_id: str
    gpu_ids: tuple[int, ...] = ()


@frozen
class LeaseSpilled(Message):
    lease_id: str
    node_id: str


@frozen
class LeaseRejected(Message):
    """The lease cannot be had here. ``final``: it can never be had in this cluster."""

    lease_id: str
    reason: str
    final: bool = False


@frozen
class LeaseInfeasible(Message):
    """A warning: no node in the cluster could ever satisfy the request; it stays queued."""

    lease_id: str
    reason: str


@frozen
class ReturnWorkerLease(Message):
    lease_id: str
    worker_id: str
    worker_exiting: bool = False


@frozen
class CancelLease(Message):
    lease_id: str


@frozen
class WorkerBlocked(Message):
    worker_id: str


@frozen
class WorkerUnblocked(Message):
    worker_id: str


@frozen
class WorkerRegistered(Message):
    worker_id: str
    node_id: str


@frozen
class ExitIfIdle(Message):
    """NM -> one of its idle workers, beyond the pool's size: exit if you hold nothing."""

    worker_id: str


@frozen
class ExitIfIdleReply(Message):
    """Worker -> NM: ``exiting`` if it holds nothing (no object, reference, task or actor), else stays."""

    worker_id: str
    exiting: bool


@frozen
class LeasedWorkerDied(Message):
    """Sent by a node manager to the holder of a lease whose worker exited."""

    lease_id: str
    worker_id: str
    reason: str


@frozen
class PutObject(Message):
    """A primary copy for the node's store; it stays pinned until its owner frees it.

    With ``reply_to`` the node answers ``ObjectStored`` once the copy is in (``put`` waits
    for it, as Ray's put returns once the object is sealed in the store).
    """

    object_id: str
    owner: str
    blob: Blob
    reply_to: str = ""


@frozen
class ObjectStored(Message):
    object_id: str


@frozen
class PullObject(Message):
    object_id: str
    requester: str
    locations: tuple[str, ...]


@frozen
class ObjectLocal(Message):
    object_id: str
    blob: Blob


@frozen
class ObjectUnavailable(Message):
    object_id: str
    reason: str


@frozen
class FreeObjects(Message):
    traced = False
    object_ids: tuple[str, ...]


# -------------------------------------------------------------- node manager <-> node manager


@frozen
class FetchObject(Message):
    object_id: str
    requester_node: str


@frozen
class ObjectTransfer(Message):
    object_id: str
    blob: Blob | None
    from_node: str


# ---------------------------------------------------------------- core worker <-> core worker


@frozen
class PushTask(Message):
    task_id: str
    spec: TaskSpec
    reply_to: str
    args: tuple[ResolvedArg, ...] = ()
    lease_id: str = ""
    gpu_ids: tuple[int, ...] = ()


@frozen
class TaskReply(Message):
    task_id: str
    worker_id: str
    returns: tuple[ReturnValue, ...] = ()
    borrowed: tuple[RefInfo, ...] = ()
    retryable_error: bool = False
    cancelled: bool = False


@frozen
class GetObjectStatus(Message):
    object_id: str
    requester: str


@frozen
class ObjectStatus(Message):
    object_id: str
    blob: Blob | None = None
    locations: tuple[str, ...] = ()
    error: tuple[str, str] = ()
    """For an object that cannot be had: (exception name in rayref.exceptions, message)."""


@frozen
class AddBorrower(Message):
    traced = False
    object_id: str
    borrower: str


@frozen
class RemoveBorrower(Message):
    traced = False
    object_id: str
    borrower: str


@frozen
class CancelTask(Message):
    task_id: str
    force: bool
    recursive: bool


# ------------------------------------------------------------------------- control plane


@frozen
class RegisterNode(Message):
    node: NodeInfo


@frozen
class ResourceReport(Message):
    node_id: str
    available: Resources


@frozen
class ClusterView(Message):
    """The control plane's view of all nodes, sent to node managers when it changes."""

    traced = False
    nodes: tuple[NodeInfo, ...]


@frozen
class RegisterActor(Message):
    """An actor to create; with ``creation_error`` one that can never be (its arguments failed)."""

    actor_id: str
    spec: TaskSpec
    args: tuple[ResolvedArg, ...] = ()
    creation_error: str = ""


@frozen
class ActorRegistrationFailed(Message):
    actor_id: str
    reason: str


@frozen
class SubscribeActor(Message):
    actor_id: str
    subscriber: str


@frozen
class ActorStateChanged(Message):
    actor_id: str
    info: ActorInfo


@frozen
class KillActor(Message):
    actor_id: str
    no_restart: bool = True
    reason: str = ""


@frozen
class Query(Message):
    """A read of the control plane's state: ``what`` is 'nodes' or 'named_actor'."""

    request_id: str
    requester: str
    what: str
    name: str = ""
    namespace: str = ""


@frozen
class QueryReply(Message):
    request_id: str
    value: Any = None


# ------------------------------------------------------------------ transport -> engine


@frozen
class TimerFired(Message):
    traced = False
    key: tuple


@frozen
class WorkerExited(Message):
    """A worker process is gone (it crashed, or a node manager killed it)."""

    worker_id: str
    node_id: str
    reason: str


@frozen
class ProcessDied(Message):
    """A worker or driver process is gone: NM -> CP, then CP -> every NM.

    What it owned dies with it, as in Ray: the actors it created (unless detached) and the
    workers leased to it for its tasks.
    """

    address: str


@frozen
class NodeDied(Message):
    """A node is gone with every process on it: T (the failure detector) -> CP, then CP -> every
    live NM, then NM -> its local processes.

    The node is marked dead in the view; what its processes owned dies with them (as for
    ``ProcessDied``); tasks and actors that ran there are retried or restarted elsewhere.
    """

    node_id: str
    reason: str


@frozen
class PeerUnreachable(Message):
    """A message could not be delivered: its addressee is dead or gone."""

    to: str
    original: Any


@frozen
class TaskExecuted(Message):
    """User code for ``task_id`` ran in this worker; the outcome is already serialized."""

    task_id: str
    returns: tuple[Blob, ...] = ()
    retryable_error: bool = False
    cancelled: bool = False


@frozen
class ObjectSpilled(Message):
    """The transport carried out ``SpillObject``: ``blob`` reads the object from where it was spilled."""

    traced = False
    object_id: str
    blob: Blob


@frozen
class ClusterQuiescent(Message):
    """Nothing more can happen unless something new arrives (sim: the event queue drained)."""


# ------------------------------------------------------------------ engine -> transport


class Command:
    __slots__ = ()


@frozen
class Send(Command):
    to: str
    msg: Message


@frozen
class StartTimer(Command):
    key: tuple
    delay: float


@frozen
class StartWorker(Command):
    worker_id: str
    node_id: str


@frozen
class KillWorker(Command):
    worker_id: str
    reason: str


@frozen
class ExecuteTask(Command):
    """Run user code for ``spec`` in this worker, with the top-level arguments resolved."""

    spec: TaskSpec
    args: tuple[Blob, ...]
    gpu_ids: tuple[int, ...] = ()
    node_id: str = ""


@frozen
class InterruptTask(Command):
    """Raise ``KeyboardInterrupt`` in the user code running ``task_id`` (non-force cancel)."""

    task_id: str


@frozen
class Wake(Command):
    """A user thread blocked on ``waiter`` may go on."""

    waiter: Any


@frozen
class Log(Command):
    level: str
    text: str


@frozen
class ExitProcess(Command):
    reason: str


@frozen
class SpillObject(Command):
    """Move a node's stored object out of memory. The gRPC node writes it to a file and reports
    ``ObjectSpilled``; the sim does nothing (the store's books are all it models)."""

    object_id: str
    blob: Blob
