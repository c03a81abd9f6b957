"""Submitting tasks: normal tasks over worker leases, actor tasks over per-actor channels.

Normal tasks are grouped by scheduling key (resources, strategy, function, environment). Each
key keeps a queue of resolved tasks and up to ``max_pending_lease_requests`` outstanding lease
requests; a granted lease runs the key's tasks one after another and is returned when the
queue is empty (Ray's lease reuse). A lease request starts at the local node manager, which
grants, queues, spills it to another node, or rejects it.

A submitted task moves through::

    RESOLVING --deps ready--> QUEUED --pushed on a lease--> RUNNING --reply--> (done)
        |                        ^                            | worker died / retryable error
        '--dep failed / cancel   '----------- retry ----------'

Actor tasks go through the actor's channel, in submission order: resolved tasks at the head
of the queue are pushed while the actor is ALIVE. When the actor restarts, tasks that were in
flight are retried (``max_task_retries``) or fail with ``ActorDiedError``; when it dies for
good, everything queued fails with the death cause.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from rayref.core import protocol as p


class TaskState(enum.Enum):
    RESOLVING = "resolving"
    QUEUED = "queued"
    RUNNING = "running"


@dataclass(slots=True, eq=False)
class PendingTask:
    spec: p.TaskSpec
    retries_left: int
    sequence_no: int = 0
    """An actor call's number, per caller and actor, from 1 (in-flight calls are re-queued in this order)."""
    state: TaskState = TaskState.RESOLVING
    args: tuple[p.ResolvedArg, ...] = ()
    lease_id: str = ""
    worker_id: str = ""
    cancelled: bool = False
    force_cancelled: bool = False


@dataclass(slots=True)
class ActiveLease:
    lease_id: str
    key: tuple
    worker_id: str = ""
    node_id: str = ""
    gpu_ids: tuple[int, ...] = ()
    task_id: str = ""
    uses: int = 0


@dataclass(slots=True)
class KeyQueue:
    tasks: deque = field(default_factory=deque)
    requested: dict[str, str] = field(default_factory=dict)
    active: int = 0
    idle: list = field(default_factory=list)
    warned: bool = False


class NormalTaskSubmitter:
    def __init__(self, cw):
        self.cw = cw
        self.keys: dict[tuple, KeyQueue] = {}
        self.leases: dict[str, ActiveLease] = {}

    def enqueue(self, task: PendingTask, front: bool = False) -> None:
        task.state = TaskState.QUEUED
        key = task.spec.scheduling_key()
        queue = self.keys.setdefault(key, KeyQueue())
        if front:
            queue.tasks.appendleft(task.spec.task_id)
        else:
            queue.tasks.append(task.spec.task_id)
        self._pump(key)

    def dequeue(self, task: PendingTask) -> None:
        key = task.spec.scheduling_key()
        queue = self.keys.get(key)
        if queue is not None and task.spec.task_id in queue.tasks:
            queue.tasks.remove(task.spec.task_id)
            if not queue.tasks:
                self._cancel_lease_requests(key)

    def _pump(self, key: tuple) -> None:
        """Run waiting tasks on idle leases, and ask for more leases while tasks still wait."""
        queue = self.keys[key]
        while queue.tasks and queue.idle:
            self._push(self.leases[queue.idle.pop()], queue.tasks.popleft())
        limit = self.cw.config.max_pending_lease_requests
        while queue.tasks and len(queue.requested) < min(len(queue.tasks), limit):
            self._request_lease(key, self.cw.node_id, spilled=0)
        if not queue.tasks and not queue.requested and not queue.active:
            del self.keys[key]

    def _request_lease(self, key: tuple, node_id: str, spilled: int) -> None:
        queue = self.keys[key]
        lease_id = self.cw.new_id("l")
        queue.requested[lease_id] = node_id
        spec = self.cw.tasks[queue.tasks[0]].spec
        self.cw.send(node_id, p.RequestWorkerLease(lease_id=lease_id, requester=self.cw.address,
                                                   spec=spec, spilled=spilled))

    def _push(self, lease: ActiveLease, task_id: str) -> None:
        task = self.cw.tasks[task_id]
        task.state, task.lease_id, task.worker_id = TaskState.RUNNING, lease.lease_id, lease.worker_id
        lease.task_id = task_id
        lease.uses += 1
        self.cw.send(lease.worker_id, p.PushTask(task_id=task_id, spec=task.spec, reply_to=self.cw.address,
                                                 args=task.args, lease_id=lease.lease_id, gpu_ids=lease.gpu_ids))

    def _key_of_request(self, lease_id: str) -> tuple | None:
        for key, queue in self.keys.items():
            if lease_id in queue.requested:
                return key
        return None

    # ------------------------------------------------------------------ lease replies

    def on_granted(self, msg: p.LeaseGranted) -> None:
        key = self._key_of_request(msg.lease_id)
        if key is None:
            self.cw.send(msg.node_id, p.ReturnWorkerLease(lease_id=msg.lease_id, worker_id=msg.worker_id))
            return
        del self.keys[key].requested[msg.lease_id]
        lease = ActiveLease(msg.lease_id, key, msg.worker_id, msg.node_id, msg.gpu_ids)
        self.leases[msg.lease_id] = lease
        self.keys[key].active += 1
        self._next_or_return(lease)
        if key in self.keys:
            self._pump(key)

    def _next_or_return(self, lease: ActiveLease) -> None:
        """The key's next task runs on the lease; with none waiting, the lease lingers idle for
        ``lease_linger`` seconds (a loop of ``get(f.remote())`` reuses one worker), then goes back."""
        queue = self.keys[lease.key]
        if queue.tasks:
            self._push(lease, queue.tasks.popleft())
        elif self.cw.config.lease_linger > 0:
            queue.idle.append(lease.lease_id)
            self.cw.out.append(p.StartTimer(key=("linger", lease.lease_id, lease.uses),
                                            delay=self.cw.config.lease_linger))
        else:
            self._return(lease)

    def on_linger_over(self, lease_id: str, uses: int) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None and lease.uses == uses and lease_id in self.keys[lease.key].idle:
            self._return(lease)

    def return_idle(self) -> None:
        """Give back every lease lingering idle: this process is about to end on purpose, and its
        node kills the workers still leased to a process that died (P-ACT-7)."""
        for lease in [self.leases[lease_id] for queue in self.keys.values() for lease_id in queue.idle]:
            self._return(lease)

    def _return(self, lease: ActiveLease) -> None:
        self._drop(lease)
        self.cw.send(lease.node_id, p.ReturnWorkerLease(lease_id=lease.lease_id, worker_id=lease.worker_id))
        self._pump(lease.key)

    def _drop(self, lease: ActiveLease) -> None:
        del self.leases[lease.lease_id]
        queue = self.keys[lease.key]
        queue.active -= 1
        if lease.lease_id in queue.idle:
            queue.idle.remove(lease.lease_id)

    def on_spilled(self, msg: p.LeaseSpilled) -> None:
        key = self._key_of_request(msg.lease_id)
        if key is not None:
            del self.keys[key].requested[msg.lease_id]
            if self.keys[key].tasks:
                self._request_lease(key, msg.node_id, spilled=1)
            else:
                self._pump(key)

    def on_rejected(self, msg: p.LeaseRejected) -> None:
        key = self._key_of_request(msg.lease_id)
        if key is None:
            return
        queue = self.keys[key]
        del queue.requested[msg.lease_id]
        if msg.final:
            failed, queue.tasks = list(queue.tasks), deque()
            for task_id in failed:
                self.cw.fail_task(self.cw.tasks[task_id], "TaskUnschedulableError", msg.reason)
        self._pump(key)

    def on_infeasible(self, msg: p.LeaseInfeasible) -> None:
        key = self._key_of_request(msg.lease_id)
        if key is not None and not self.keys[key].warned:
            self.keys[key].warned = True
            spec = self.cw.tasks[self.keys[key].tasks[0]].spec if self.keys[key].tasks else None
            name = spec.name if spec else "a task"
            self.cw.out.append(p.Log(level="warning", text=(
                f"The task {name} cannot be scheduled right now: {msg.reason}. It stays queued until "
                f"a node with these resources joins; reduce the request or add such a node.")))

    # ------------------------------------------------------------------ task outcomes

    def on_reply(self, task: PendingTask) -> None:
        lease = self.leases.get(task.lease_id)
        if lease is not None and lease.task_id == task.spec.task_id:
            lease.task_id = ""
            self._next_or_return(lease)

    def on_worker_died(self, msg: p.LeasedWorkerDied) -> None:
        lease = self.leases.get(msg.lease_id)
        if lease is None:
            return
        self._drop(lease)
        if lease.task_id:
            task = self.cw.tasks.get(lease.task_id)
            if task is not None:
                self.cw.task_lost(task, f"the worker running it died: {msg.reason}")
        if lease.key in self.keys:
            self._pump(lease.key)

    def on_node_died(self, node_id: str, reason: str) -> None:
        """Requests queued at a dead node are made again (elsewhere); tasks running there are lost."""
        for queue in self.keys.values():
            for lease_id in [i for i, node in queue.requested.items() if node == node_id]:
                del queue.requested[lease_id]
        for lease in [lease for lease in self.leases.values() if lease.node_id == node_id]:
            self._drop(lease)
            task = self.cw.tasks.get(lease.task_id) if lease.task_id else None
            if task is not None:
                self.cw.task_lost(task, f"the node it was running on, {node_id}, died ({reason})", "NodeDiedError")
        for key in list(self.keys):
            if key in self.keys:
                self._pump(key)

    def _cancel_lease_requests(self, key: tuple) -> None:
        queue = self.keys[key]
        for lease_id, node_id in queue.requested.items():
            self.cw.send(node_id, p.CancelLease(lease_id=lease_id))
        queue.requested.clear()
        self._pump(key)


class ChannelState(enum.Enum):
    UNREGISTERED = "UNREGISTERED"
    PENDING_CREATION = "PENDING_CREATION"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


@dataclass(slots=True)
class ActorChannel:
    actor_id: str
    state: ChannelState = ChannelState.UNREGISTERED
    address: str = ""
    queue: deque = field(default_factory=deque)
    inflight: dict[str, str] = field(default_factory=dict)
    next_seq: int = 0
    subscribed: bool = False
    death_cause: str = ""
    detached: bool = False
    creation_task: str = ""


class ActorTaskSubmitter:
    def __init__(self, cw):
        self.cw = cw
        self.channels: dict[str, ActorChannel] = {}

    def channel(self, actor_id: str) -> ActorChannel:
        ch = self.channels.get(actor_id)
        if ch is None:
            ch = self.channels[actor_id] = ActorChannel(actor_id)
        if not ch.subscribed:
            ch.subscribed = True
            self.cw.send(p.CONTROL_PLANE, p.SubscribeActor(actor_id=actor_id, subscriber=self.cw.address))
        return ch

    def created(self, actor_id: str, detached: bool) -> ActorChannel:
        ch = self.channels[actor_id] = ActorChannel(actor_id, subscribed=True, detached=detached)
        return ch

    def next_sequence(self, actor_id: str) -> int:
        ch = self.channel(actor_id)
        ch.next_seq += 1
        return ch.next_seq

    def enqueue(self, task: PendingTask) -> None:
        self.channel(task.spec.actor_id).queue.append(task.spec.task_id)

    def pump(self, actor_id: str) -> None:
        ch = self.channels[actor_id]
        if ch.state == ChannelState.DEAD:
            self._fail_all(ch)
            return
        if ch.state != ChannelState.ALIVE:
            return
        while ch.queue:
            task = self.cw.tasks.get(ch.queue[0])
            if task is None:
                ch.queue.popleft()
                continue
            if task.state != TaskState.QUEUED:
                return
            ch.queue.popleft()
            task.state, task.worker_id = TaskState.RUNNING, ch.address
            ch.inflight[task.spec.task_id] = ch.address
            self.cw.send(ch.address, p.PushTask(task_id=task.spec.task_id, spec=task.spec,
                                                reply_to=self.cw.address, args=task.args))

    def on_state(self, msg: p.ActorStateChanged) -> None:
        ch = self.channels.get(msg.actor_id)
        if ch is None or ch.state == ChannelState.DEAD:  # DEAD is final (a kill may be known before the news)
            return
        info = msg.info
        ch.state = ChannelState(info.state)
        ch.death_cause = info.death_cause
        if ch.state in (ChannelState.RESTARTING, ChannelState.DEAD):
            self._lose_inflight_later(ch, lambda task_id, address: True)
        elif ch.state == ChannelState.ALIVE:
            self._lose_inflight_later(ch, lambda task_id, address: address != info.address)
        ch.address = info.address
        self.pump(msg.actor_id)
        self.cw.actor_state_changed(ch)

    def on_killed(self, actor_id: str, reason: str) -> None:
        """This process killed the actor for good: its later calls fail at once, as in Ray."""
        ch = self.channels.get(actor_id)
        if ch is None or ch.state == ChannelState.DEAD:
            return
        ch.state, ch.death_cause = ChannelState.DEAD, reason
        self._lose_inflight_later(ch, lambda task_id, address: True)
        self.pump(actor_id)
        self.cw.actor_state_changed(ch)

    def on_registration_failed(self, msg: p.ActorRegistrationFailed) -> None:
        ch = self.channels.get(msg.actor_id)
        if ch is not None:
            ch.state, ch.death_cause = ChannelState.DEAD, msg.reason
            self._fail_all(ch)
            self.cw.actor_state_changed(ch)

    def on_unreachable(self, to: str, msg: p.PushTask) -> None:
        """A push to a dead incarnation; if a new one is already known, retry or fail now."""
        ch = self.channels.get(msg.spec.actor_id)
        if ch is not None and ch.address != to and ch.state == ChannelState.ALIVE:
            self._lose_inflight(ch, lambda task_id, address: address == to)
            self.pump(ch.actor_id)

    def on_reply(self, task: PendingTask) -> None:
        ch = self.channels.get(task.spec.actor_id)
        if ch is not None:
            ch.inflight.pop(task.spec.task_id, None)

    def dequeue(self, task: PendingTask) -> None:
        ch = self.channels.get(task.spec.actor_id)
        if ch is not None and task.spec.task_id in ch.queue:
            ch.queue.remove(task.spec.task_id)

    def unblock(self, actor_id: str) -> None:
        """A call that never left (failed or cancelled while queued) must not hold up the rest."""
        ch = self.channels.get(actor_id)
        if ch is not None and ch.state == ChannelState.ALIVE:
            self.pump(actor_id)

    def _lose_inflight_later(self, ch: ActorChannel, lost_if) -> None:
        """Calls in flight to a dead incarnation are lost, but only after ``actor_reply_grace``:
        replies it sent before it died may travel a faster path than the news of its death
        (Ray likewise waits for the call's own connection to fail, not for the GCS)."""
        doomed = tuple(item for item in ch.inflight.items() if lost_if(*item))
        if doomed:
            self.cw.out.append(p.StartTimer(key=("inflight", ch.actor_id, doomed),
                                            delay=self.cw.config.actor_reply_grace))

    def on_grace_over(self, actor_id: str, doomed: tuple) -> None:
        ch = self.channels.get(actor_id)
        if ch is not None:
            doomed = set(doomed)
            self._lose_inflight(ch, lambda task_id, address: (task_id, address) in doomed)
            self.pump(actor_id)

    def _lose_inflight(self, ch: ActorChannel, lost_if) -> None:
        lost = [tid for tid, address in ch.inflight.items() if lost_if(tid, address)]
        retry = []
        for task_id in lost:
            del ch.inflight[task_id]
            task = self.cw.tasks.get(task_id)
            if task is None:
                continue
            if task.retries_left != 0 and ch.state != ChannelState.DEAD and not task.cancelled:
                task.retries_left -= 1
                task.state = TaskState.QUEUED
                retry.append(task)
            else:
                self.cw.fail_task(task, "ActorDiedError", self._cause(ch, in_flight=True))
        if retry:
            merged = sorted(retry, key=lambda t: t.sequence_no)
            ch.queue = deque([t.spec.task_id for t in merged] + list(ch.queue))

    def _cause(self, ch: ActorChannel, in_flight: bool = False) -> str:
        cause = ch.death_cause or "the actor's worker process died"
        what = "The actor died while this task was running" if in_flight else "The actor is dead"
        return f"{what} (actor {ch.actor_id}): {cause}"

    def _fail_all(self, ch: ActorChannel) -> None:
        while ch.queue:
            task = self.cw.tasks.get(ch.queue.popleft())
            if task is not None:
                self.cw.fail_task(task, "ActorDiedError", self._cause(ch))
