"""The core worker: the engine behind one driver or worker process.

It has two sides. As a *caller* it owns what its process creates (see ``references``),
submits tasks and actor calls (see ``task_submitter``), and resolves objects for ``get`` and
``wait``. As an *executor* (in worker processes) it takes pushed tasks, pulls their large
arguments into the node's store, asks the transport to run user code (``ExecuteTask``), and
replies with the results.

Two ways in, both returning the commands for the transport:

- ``handle(msg, now)`` for messages and timers;
- the API methods (``submit_task``, ``put``, ``begin_get``, ...) called by user code of this
  process through the transport, which then runs ``drain()``.

User threads never block in here. ``begin_get`` returns a ``Waiter``; the transport blocks
the thread until the engine emits ``Wake(waiter)``, then the API collects ``results``.
``ObjectRef`` finalizers only append to ``pending_decrefs``, drained on the next entry, so
garbage collection can never re-enter the engine.

An object is *available* to a waiter when its value (or error) is known; with
``fetch_local`` it must also be in this process (inline, or pulled through the local node's
store). Invariants: RC1-RC2 (references), CW1 every pending task's returns are owned here.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.references import Reference, ReferenceTable
from rayref.core.task_receiver import TERMINATE, TaskReceiver
from rayref.core.task_submitter import (ActorTaskSubmitter, ChannelState, NormalTaskSubmitter,
                                        PendingTask, TaskState)


@dataclass(eq=False, slots=True)
class Waiter:
    """A user thread's (or the engine's own) wait for objects or a reply."""

    wid: int
    ids: tuple[str, ...] = ()
    need: int = 0
    fetch_local: bool = True
    pending: dict[str, int] = field(default_factory=dict)
    ready: int = 0
    done: bool = False
    timed_out: bool = False
    blocked: bool = False
    on_done: Any = None
    value: Any = None
    waiting_for: set | None = None
    """Set for a waiter on objects this process is computing (``_watch_computing``): those not yet here."""


class CoreWorker:
    def __init__(self, address: str, node_id: str, config: EngineConfig, *, is_driver: bool = False):
        self.address = address
        self.node_id = node_id
        self.config = config
        self.is_driver = is_driver
        self.out: list = []
        self.now = 0.0
        self.seq = 0
        self.refs = ReferenceTable(address, node_id, self.out)
        self.refs.on_free = self._on_freed
        self.tasks: dict[str, PendingTask] = {}
        self.normal = NormalTaskSubmitter(self)
        self.actors = ActorTaskSubmitter(self)
        self.waiters: dict[int, Waiter] = {}
        self.computing_waiters: list[Waiter] = []
        self.requests: dict[str, Waiter] = {}
        self.registrations: dict[str, Waiter] = {}
        self.pending_decrefs: list[str] = []
        self.pending_increfs: deque = deque()
        self.receiver = TaskReceiver(self)
        self.blocked = 0
        self.handlers = {
            p.PushTask: self.receiver.on_push,
            p.TaskExecuted: self.receiver.on_executed,
            p.TaskReply: self._on_task_reply,
            p.CancelTask: self.receiver.on_cancel_task,
            p.LeaseGranted: self.normal.on_granted,
            p.LeaseSpilled: self.normal.on_spilled,
            p.LeaseRejected: self.normal.on_rejected,
            p.LeaseInfeasible: self.normal.on_infeasible,
            p.LeasedWorkerDied: self.normal.on_worker_died,
            p.ObjectLocal: self._on_object_local,
            p.ObjectStored: self._on_object_stored,
            p.ObjectUnavailable: self._on_object_unavailable,
            p.GetObjectStatus: self._on_get_status,
            p.ObjectStatus: self._on_status,
            p.AddBorrower: lambda m: self.refs.add_borrower(m.object_id, m.borrower),
            p.RemoveBorrower: lambda m: self.refs.remove_borrower(m.object_id, m.borrower),
            p.ActorStateChanged: self.actors.on_state,
            p.ActorRegistrationFailed: self.actors.on_registration_failed,
            p.QueryReply: self._on_query_reply,
            p.TimerFired: self._on_timer,
            p.PeerUnreachable: self._on_unreachable,
            p.NodeDied: self._on_node_died,
            p.ExitIfIdle: self._on_exit_if_idle,
        }

    # ------------------------------------------------------------------ plumbing

    def handle(self, msg: p.Message, now: float) -> list:
        self.now = now
        self.release_dropped()
        self.handlers[type(msg)](msg)
        return self.drain()

    def drain(self) -> list:
        out = self.out[:]
        self.out.clear()
        return out

    def send(self, to: str, msg: p.Message) -> None:
        self.out.append(p.Send(to=to, msg=msg))

    def new_id(self, kind: str) -> str:
        self.seq += 1
        return f"{self.address}.{kind}{self.seq}"

    def release_dropped(self) -> None:
        """Apply the reference changes user threads queued: new refs first, then dropped ones."""
        while self.pending_increfs:
            info, register = self.pending_increfs.popleft()
            self.refs.add_local(info, register)
        while self.pending_decrefs:
            self.refs.remove_local(self.pending_decrefs.pop())

    # ------------------------------------------------------------------ API: objects

    def add_local_ref(self, info: p.RefInfo, register: bool = True) -> None:
        """A new ObjectRef in this process; safe from any thread (applied on the next entry)."""
        self.pending_increfs.append((info, register))

    def put(self, blob: p.Blob, object_id: str = "") -> Waiter:
        """Own ``blob`` as a new object. Small: ready at once. Large: ready once the node stored it.

        The returned waiter is done when the object is ready; its ``value`` is the RefInfo.
        """
        self.release_dropped()
        ref = self.refs.own(object_id or self.new_id("p"))
        ref.contained = blob.contained
        self.refs.add_contained(blob.contained)
        info = p.RefInfo(object_id=ref.object_id, owner=self.address)
        if blob.nbytes <= self.config.inline_threshold:
            self._store(ref, blob)
        else:  # the node's store has it now: keeping the Blob here too would hold its memory (gRPC)
            ref.nbytes, ref.locations = blob.nbytes, [self.node_id]
            self.send(self.node_id, p.PutObject(object_id=ref.object_id, owner=self.address, blob=blob,
                                                reply_to=self.address))
        waiter = self._watch((info,), 1, fetch_local=False)
        waiter.value = info
        return waiter

    def _on_object_stored(self, msg: p.ObjectStored) -> None:
        ref = self.refs.get(msg.object_id)
        if ref is not None and not ref.ready:
            ref.ready = True
            self._object_changed(ref)

    def _store(self, ref: Reference, blob: p.Blob | None, node_id: str = "", nbytes: int = 0) -> None:
        ref.blob = blob
        ref.nbytes = nbytes or (blob.nbytes if blob is not None else 0)
        if node_id:
            ref.locations = [node_id]
        ref.ready = True
        self._object_changed(ref)

    def begin_get(self, infos, timeout: float | None, fetch_local: bool = True, num_returns: int | None = None,
                  ids: tuple[str, ...] | None = None, wanted: set[str] | None = None) -> Waiter:
        """Wait for ``num_returns`` of ``infos`` (all by default). A caller that has them already
        passes the objects' ``ids`` and, if they are distinct, their set ``wanted``."""
        self.release_dropped()
        need = len(infos) if num_returns is None else num_returns
        waiter = self._watch(infos, need, fetch_local, ids=ids, wanted=wanted)
        if not waiter.done:
            if timeout is not None and timeout <= 0:
                self._finish(waiter, timed_out=True)
            else:
                self._block_worker(waiter)
                if timeout is not None:
                    self.out.append(p.StartTimer(key=("waiter", waiter.wid), delay=timeout))
        return waiter

    def results(self, waiter: Waiter) -> list[p.Blob]:
        blobs = []
        for object_id in waiter.ids:
            ref = self.refs.get(object_id)
            blob = ref.blob if ref is not None else None
            blobs.append(blob if blob is not None else p.system_error(
                "ObjectLostError", f"Object {object_id} is no longer available: all references to it were released."))
        return blobs

    def ready_ids(self, waiter: Waiter, limit: int | None = None) -> list[str]:
        """The waiter's ready objects in its order, the first ``limit`` of them."""
        ready, table = [], self.refs.refs
        for oid in waiter.ids:
            if self._available(table.get(oid), waiter.fetch_local):
                ready.append(oid)
                if len(ready) == limit:
                    break
        return ready

    def _available(self, ref: Reference | None, fetch_local: bool) -> bool:
        return ref is not None and ref.ready and (not fetch_local or ref.blob is not None)

    def _watch(self, infos, need: int, fetch_local: bool, on_done=None, ids: tuple | None = None,
               wanted: set | None = None) -> Waiter:
        """A waiter for ``need`` of ``infos``, registered on each that is not yet available. (The
        one pass over the objects of every blocking ``wait``: kept lean.)"""
        self.seq += 1
        ids = tuple([i.object_id for i in infos]) if ids is None else ids
        waiter = Waiter(self.seq, ids, need, fetch_local, on_done=on_done)
        if fetch_local and on_done is None and self._watch_computing(waiter, wanted):
            return waiter
        watched, pending, table = [], waiter.pending, self.refs.refs
        for info in infos:
            oid = info.object_id
            ref = table.get(oid) or self._borrowed_entry(info)
            if self._available(ref, fetch_local):
                waiter.ready += 1
                if waiter.ready >= need:  # wait(): the rest need not be looked at
                    break
            elif oid in pending:  # get() of the same object twice
                pending[oid] += 1
            else:
                pending[oid] = 1
                ref.waiters.append(waiter)
                if ref.ready or not ref.owned:  # an owned object being computed needs nothing asked
                    watched.append(ref)
        if waiter.ready >= need:
            self._finish(waiter)
            return waiter
        self.waiters[waiter.wid] = waiter
        for ref in watched:
            self._resolve(ref, fetch_local)
        return waiter

    def _watch_computing(self, waiter: Waiter, wanted: set | None) -> bool:
        """The common wait, in set operations: each object is here already or is being computed for
        this process (owned, not ready: nothing to ask anyone), so the waiter is registered once,
        not on each object. False (nothing done) when that does not hold."""
        wanted = set(waiter.ids) if wanted is None else wanted
        if len(wanted) != len(waiter.ids):
            return False
        pending = wanted - self.refs.available
        if not pending <= self.refs.computing:
            return False
        waiter.ready = len(wanted) - len(pending)
        if waiter.ready >= waiter.need:
            self._finish(waiter)
            return True
        waiter.waiting_for = pending
        self.computing_waiters.append(waiter)
        self.waiters[waiter.wid] = waiter
        return True

    def _borrowed_entry(self, info: p.RefInfo) -> Reference:
        self.refs.add_local(info, register=False)
        ref = self.refs.get(info.object_id)
        ref.local -= 1
        return ref

    def _resolve(self, ref: Reference, fetch_local: bool) -> None:
        if not ref.ready:
            if not ref.owned and not ref.status_requested:
                ref.status_requested = True
                self.send(ref.owner, p.GetObjectStatus(object_id=ref.object_id, requester=self.address))
        elif fetch_local and ref.blob is None and not ref.pull_requested:
            ref.pull_requested = True
            self.send(self.node_id, p.PullObject(object_id=ref.object_id, requester=self.address,
                                                 locations=tuple(ref.locations)))

    def _object_changed(self, ref: Reference) -> None:
        self.refs.note_state(ref)
        if ref.owned and ref.ready and ref.status_subscribers:
            subscribers, ref.status_subscribers = ref.status_subscribers, []
            for requester in subscribers:
                self.send(requester, self._status_of(ref))
        for waiter in list(ref.waiters):
            if self._available(ref, waiter.fetch_local):
                waiter.ready += waiter.pending.pop(ref.object_id, 0)
                ref.waiters.remove(waiter)
                if waiter.ready >= waiter.need:
                    self._finish(waiter)
            elif ref.ready:
                self._resolve(ref, fetch_local=True)
        if self.computing_waiters and ref.ready:
            self._computed(ref)

    def _computed(self, ref: Reference) -> None:
        """An object this process computed is ready: here (it counts), or elsewhere (pull it)."""
        for waiter in list(self.computing_waiters):
            if ref.object_id not in waiter.waiting_for:
                continue
            if ref.blob is None:
                self._resolve(ref, fetch_local=True)
                continue
            waiter.waiting_for.discard(ref.object_id)
            waiter.ready += 1
            if waiter.ready >= waiter.need:
                self._finish(waiter)

    def _finish(self, waiter: Waiter, timed_out: bool = False) -> None:
        if waiter.done:
            return
        waiter.done, waiter.timed_out = True, timed_out
        self.waiters.pop(waiter.wid, None)
        if waiter.waiting_for is not None:
            self.computing_waiters.remove(waiter)
        for object_id in list(waiter.pending):
            ref = self.refs.get(object_id)
            if ref is not None:
                self.refs.forget_waiter(ref, waiter)
        if waiter.blocked:
            self.blocked -= 1
            if self.blocked == 0:
                self.send(self.node_id, p.WorkerUnblocked(worker_id=self.address))
        if waiter.on_done is not None:
            waiter.on_done(waiter)
        else:
            self.out.append(p.Wake(waiter=waiter))

    def abandon(self, waiter: Waiter) -> None:
        """The user thread stopped waiting (it was interrupted): stop watching, unblock the worker."""
        self._finish(waiter, timed_out=True)

    def _block_worker(self, waiter: Waiter) -> None:
        """A task blocked in get/wait lends its CPUs back to the node, as in Ray."""
        if self.receiver.normal_running and not self.receiver.actor_id:
            waiter.blocked = True
            self.blocked += 1
            if self.blocked == 1:
                self.send(self.node_id, p.WorkerBlocked(worker_id=self.address))

    def _on_exit_if_idle(self, msg: p.ExitIfIdle) -> None:
        """The node would shrink its pool: agree only if this worker holds nothing anyone may need
        (an object it owns or borrows, a task it submitted, a lease, an execution, an actor), as
        Ray's worker refuses to exit while it owns objects."""
        holds_nothing = not (self.refs.refs or self.tasks or self.normal.leases or self.receiver.executions
                             or self.receiver.actor_id)
        self.send(self.node_id, p.ExitIfIdleReply(worker_id=self.address, exiting=holds_nothing))

    def _on_timer(self, msg: p.TimerFired) -> None:
        """A timer is keyed by what it is for: an actor's reply grace, a lingering lease, or a
        get/wait timeout."""
        kind, *rest = msg.key
        if kind == "inflight":
            self.actors.on_grace_over(*rest)
        elif kind == "linger":
            self.normal.on_linger_over(*rest)
        elif (waiter := self.waiters.get(rest[0])) is not None:
            self._finish(waiter, timed_out=True)

    # ------------------------------------------------------------------ owner / borrower protocol

    def _status_of(self, ref: Reference) -> p.ObjectStatus:
        inline = ref.blob is not None and (ref.nbytes <= self.config.inline_threshold or not ref.locations)
        return p.ObjectStatus(object_id=ref.object_id, blob=ref.blob if inline else None,
                              locations=tuple(ref.locations))

    def _on_get_status(self, msg: p.GetObjectStatus) -> None:
        ref = self.refs.get(msg.object_id)
        if ref is None or not ref.owned:
            self.send(msg.requester, p.ObjectStatus(object_id=msg.object_id, error=(
                "ObjectLostError", f"Object {msg.object_id} was already freed by its owner {self.address}.")))
        elif ref.ready:
            self.send(msg.requester, self._status_of(ref))
        else:
            ref.status_subscribers.append(msg.requester)

    def _on_status(self, msg: p.ObjectStatus) -> None:
        ref = self.refs.get(msg.object_id)
        if ref is None:
            return
        if msg.error:
            self._store(ref, p.system_error(*msg.error))
        else:
            ref.locations = list(msg.locations)
            self._store(ref, msg.blob, nbytes=msg.blob.nbytes if msg.blob else 0)

    def _on_object_local(self, msg: p.ObjectLocal) -> None:
        self.receiver.on_arg_local(msg.object_id, msg.blob)
        ref = self.refs.get(msg.object_id)
        if ref is not None:
            ref.pull_requested = False
            ref.blob = msg.blob
            self._object_changed(ref)

    def _on_object_unavailable(self, msg: p.ObjectUnavailable) -> None:
        error = p.system_error("ObjectLostError", f"Object {msg.object_id} is lost: {msg.reason}.")
        self.receiver.on_arg_lost(msg.object_id, error)
        ref = self.refs.get(msg.object_id)
        if ref is not None:
            self._store(ref, error)

    def _on_node_died(self, msg: p.NodeDied) -> None:
        """A node died: its leases and lease requests are lost, and so are the objects only it held
        and the objects its processes owned. (Actors there are the control plane's business.)"""
        self.normal.on_node_died(msg.node_id, msg.reason)
        for ref, kind in self.refs.lose_node(msg.node_id):
            where = f"its owner {ref.owner}" if kind == "OwnerDiedError" else "its only copy"
            self._store(ref, p.system_error(kind, (
                f"Object {ref.object_id} is lost: {where} was on node {msg.node_id}, which died ({msg.reason}); "
                f"rayref does not reconstruct lost objects from lineage.")))

    def _on_unreachable(self, msg: p.PeerUnreachable) -> None:
        original = msg.original
        if isinstance(original, p.PushTask) and original.spec.kind == p.TaskKind.ACTOR_TASK:
            self.actors.on_unreachable(msg.to, original)
        elif isinstance(original, p.GetObjectStatus):
            ref = self.refs.get(original.object_id)
            if ref is not None:
                self._store(ref, p.system_error("OwnerDiedError", (
                    f"The owner {msg.to} of object {original.object_id} died, so the object is lost.")))

    # ------------------------------------------------------------------ API: tasks

    def submit_task(self, spec: p.TaskSpec, sequence_no: int = 0) -> None:
        self.release_dropped()
        task = PendingTask(spec, retries_left=spec.max_retries, sequence_no=sequence_no)
        self.tasks[spec.task_id] = task
        for object_id in spec.return_ids:
            self.refs.own(object_id)
        self.refs.add_submitted(spec.dependencies + spec.args.contained)
        if spec.kind == p.TaskKind.ACTOR_TASK:
            self.actors.enqueue(task)
        if spec.dependencies:
            self._watch(spec.dependencies, len(spec.dependencies), False,
                        on_done=lambda w: self._dependencies_ready(task))
        else:
            self._dependencies_ready(task)

    def submit_actor_task(self, spec: p.TaskSpec) -> None:
        self.submit_task(spec, sequence_no=self.actors.next_sequence(spec.actor_id))

    def create_actor(self, spec: p.TaskSpec) -> None:
        handle_id = spec.return_ids[0]
        self.actors.created(spec.actor_id, detached=spec.actor.detached).creation_task = spec.task_id
        self.submit_task(spec)
        self.refs.get(handle_id).actor_handle_of = spec.actor_id
        self._store(self.refs.get(handle_id), None)

    def _dependencies_ready(self, task: PendingTask) -> None:
        if task.cancelled or self.tasks.get(task.spec.task_id) is not task:
            return
        args = []
        for info in task.spec.dependencies:
            ref = self.refs.get(info.object_id)
            if ref.blob is not None and ref.blob.is_error:
                if task.spec.kind == p.TaskKind.ACTOR_CREATION:
                    self._register_dead_actor(task)
                else:
                    self._fail_with(task, ref.blob)
                return
            inline = ref.blob is not None and (ref.nbytes <= self.config.inline_threshold or not ref.locations)
            args.append(p.ResolvedArg(ref=info, blob=ref.blob if inline else None, locations=tuple(ref.locations)))
        task.args = tuple(args)
        kind = task.spec.kind
        if kind == p.TaskKind.ACTOR_CREATION:
            task.state = TaskState.RUNNING
            self.send(p.CONTROL_PLANE, p.RegisterActor(actor_id=task.spec.actor_id, spec=task.spec, args=task.args))
        elif kind == p.TaskKind.ACTOR_TASK:
            task.state = TaskState.QUEUED
            self.actors.pump(task.spec.actor_id)
        else:
            self.normal.enqueue(task)

    def _register_dead_actor(self, task: PendingTask) -> None:
        """The constructor's arguments failed: every holder of a handle must learn the actor is dead."""
        task.state = TaskState.RUNNING
        self.send(p.CONTROL_PLANE, p.RegisterActor(
            actor_id=task.spec.actor_id, spec=task.spec,
            creation_error="an argument of the actor's constructor is an error (the task that made it failed)"))

    def _on_task_reply(self, msg: p.TaskReply) -> None:
        self._register_borrowers(msg.borrowed, msg.worker_id)
        task = self.tasks.get(msg.task_id)
        if task is None or task.state != TaskState.RUNNING or task.worker_id != msg.worker_id:
            return
        spec = task.spec
        if msg.cancelled or (task.cancelled and not msg.returns):
            self._fail_with(task, p.system_error("TaskCancelledError", f"Task {spec.name} ({spec.task_id}) was cancelled."))
        elif msg.retryable_error and task.retries_left != 0 and not task.cancelled:
            self._retry(task)
        else:
            for value in msg.returns:
                self._store_return(value)
            self._finish_task(task)

    def _register_borrowers(self, borrowed, worker_id: str) -> None:
        for info in borrowed:
            if info.owner == self.address:
                self.refs.add_borrower(info.object_id, worker_id)
            else:
                self.send(info.owner, p.AddBorrower(object_id=info.object_id, borrower=worker_id))

    def _store_return(self, value: p.ReturnValue) -> None:
        ref = self.refs.get(value.object_id)
        self.refs.add_contained(value.contained, registered=True)
        if ref is None:
            if value.node_id:
                self.send(value.node_id, p.FreeObjects(object_ids=(value.object_id,)))
            self.refs.remove_contained(value.contained)
            return
        ref.contained = value.contained
        self._store(ref, value.blob, node_id=value.node_id, nbytes=value.nbytes)

    def _retry(self, task: PendingTask) -> None:
        task.retries_left -= 1
        task.spec = dataclasses.replace(task.spec, attempt=task.spec.attempt + 1)
        if task.spec.kind == p.TaskKind.ACTOR_TASK:
            self.actors.on_reply(task)
            task.state = TaskState.QUEUED
            ch = self.actors.channels[task.spec.actor_id]
            ch.queue.appendleft(task.spec.task_id)
            self.actors.pump(task.spec.actor_id)
        else:
            self.normal.on_reply(task)
            self.normal.enqueue(task, front=True)

    def task_lost(self, task: PendingTask, reason: str, error: str = "WorkerCrashedError") -> None:
        """The worker (or node) running ``task`` died: retry it, or fail it with ``error``."""
        if task.cancelled:
            self._fail_with(task, p.system_error("TaskCancelledError", f"Task {task.spec.name} was cancelled."))
        elif task.retries_left != 0:
            task.retries_left -= 1
            task.spec = dataclasses.replace(task.spec, attempt=task.spec.attempt + 1)
            self.normal.enqueue(task, front=True)
        else:
            self.fail_task(task, error, (
                f"Task {task.spec.name} ({task.spec.task_id}) failed: {reason}; "
                f"no retries left (max_retries={task.spec.max_retries})."))

    def fail_task(self, task: PendingTask, kind: str, text: str) -> None:
        self._fail_with(task, p.system_error(kind, text))

    def _fail_with(self, task: PendingTask, blob: p.Blob) -> None:
        for object_id in task.spec.return_ids:
            ref = self.refs.get(object_id)
            if ref is not None and not ref.ready:
                self._store(ref, blob)
        self._finish_task(task)

    def _finish_task(self, task: PendingTask) -> None:
        if self.tasks.pop(task.spec.task_id, None) is None:
            return
        self.refs.remove_submitted(task.spec.dependencies + task.spec.args.contained)
        kind = task.spec.kind
        if task.state == TaskState.RUNNING:
            if kind == p.TaskKind.NORMAL:
                self.normal.on_reply(task)
            elif kind == p.TaskKind.ACTOR_TASK:
                self.actors.on_reply(task)
        elif kind == p.TaskKind.ACTOR_TASK:
            self.actors.unblock(task.spec.actor_id)

    def cancel(self, object_id: str, force: bool, recursive: bool) -> None:
        self.release_dropped()
        task = self.tasks.get(object_id.rsplit(".r", 1)[0])
        if task is not None:
            self.cancel_task(task, force, recursive)

    def cancel_task(self, task: PendingTask, force: bool, recursive: bool) -> None:
        task.cancelled = True
        if task.state == TaskState.RUNNING:
            self.send(task.worker_id, p.CancelTask(task_id=task.spec.task_id, force=force, recursive=recursive))
            return
        if task.spec.kind == p.TaskKind.ACTOR_TASK:
            self.actors.dequeue(task)
        else:
            self.normal.dequeue(task)
        self._fail_with(task, p.system_error("TaskCancelledError", f"Task {task.spec.name} was cancelled."))

    # ------------------------------------------------------------------ API: actors and queries

    def kill_actor(self, actor_id: str, no_restart: bool) -> None:
        reason = "the actor was killed by ray.kill()"
        self.send(p.CONTROL_PLANE, p.KillActor(actor_id=actor_id, no_restart=no_restart, reason=reason))
        if no_restart:
            self.actors.on_killed(actor_id, reason)

    def await_registration(self, actor_id: str) -> Waiter:
        self.seq += 1
        waiter = Waiter(self.seq)
        ch = self.actors.channels[actor_id]
        if ch.state != ChannelState.UNREGISTERED:
            waiter.value = ch
            waiter.done = True
        else:
            self.registrations[actor_id] = waiter
        return waiter

    def actor_state_changed(self, ch) -> None:
        creation = self.tasks.get(ch.creation_task)
        restartable = creation is not None and creation.spec.actor.max_restarts != 0
        if creation is not None and (ch.state == ChannelState.DEAD or
                                     (ch.state == ChannelState.ALIVE and not restartable)):
            self._finish_task(creation)
        waiter = self.registrations.pop(ch.actor_id, None)
        if waiter is not None:
            waiter.value = ch
            self._finish(waiter)

    def query(self, what: str, name: str = "", namespace: str = "") -> Waiter:
        self.release_dropped()
        request_id = self.new_id("q")
        waiter = Waiter(self.seq)
        self.requests[request_id] = waiter
        self.send(p.CONTROL_PLANE, p.Query(request_id=request_id, requester=self.address, what=what,
                                           name=name, namespace=namespace))
        return waiter

    def _on_query_reply(self, msg: p.QueryReply) -> None:
        waiter = self.requests.pop(msg.request_id, None)
        if waiter is not None:
            waiter.value = msg.value
            self._finish(waiter)

    def _on_freed(self, ref: Reference) -> None:
        """An actor's last handle is gone: terminate it after the calls already submitted."""
        ch = self.actors.channels.get(ref.actor_handle_of) if ref.actor_handle_of else None
        if ch is None or ch.detached or ch.state == ChannelState.DEAD:
            return
        spec = p.TaskSpec(task_id=self.new_id("t"), kind=p.TaskKind.ACTOR_TASK, name=TERMINATE,
                          owner=self.address, owner_node=self.node_id, args=p.Blob(data=b""),
                          actor_id=ch.actor_id, method=TERMINATE, max_retries=-1)
        self.submit_actor_task(spec)

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        self.refs.validate()
        for task in self.tasks.values():
            for object_id in task.spec.return_ids:
                ref = self.refs.get(object_id)
                assert ref is None or ref.owned, f"CW1: return {object_id} of a pending task not owned here"
        assert self.receiver.running >= 0 and self.blocked >= 0, "CW2: negative counters"
        for waiter in self.computing_waiters:
            for object_id in waiter.waiting_for:
                ref = self.refs.get(object_id)
                assert ref is not None and not (ref.ready and ref.blob is not None), \
                    f"CW3: a waiter still waits for {object_id}, which is here"
