"""The node manager: one per node. Resources, worker leases, the worker pool, the object store.

A lease moves through a small table of states::

    (request) -> QUEUED --allocate--> AWAITING_WORKER --worker--> GRANTED --return--> (gone)
              -> INFEASIBLE --view changes--> QUEUED | (spilled)
              -> (spilled to another node)          -> (rejected)

The scheduling policy decides, from this node's view of the cluster (the control plane's last
broadcast, with this node's own entry always exact), whether a request runs here, queues here,
spills to another node, or can never run. A request that was already spilled, or that the
control plane directed here, is granted here at once or rejected (the requester then asks
its local node again), never queued or spilled again. What a node spills to another is
subtracted from its view of that node until the next broadcast, so a burst of requests does
not all land on the same node.

While a leased worker is blocked in ``get``/``wait`` its CPUs are lent back to the node, as
in Ray; when it unblocks it takes them back even if that overcommits the node for a while.

When another node dies (``NodeDied``, from the control plane) this node marks it dead in its
view, frees what its processes held here (their leases, and the primaries they owned, as for
``ProcessDied``), moves pulls
off it, and tells its own processes: its workers and the local processes that asked it for
something (a driver is known from its first request; Ray's core workers register with their
raylet at start).

Invariants (``validate``, specs/invariants.md):
NM1  available = total - allocations of granted and awaiting leases (blocked leases' CPUs lent).
NM2  no lease was granted resources that were not available at the time (checked on grant).
NM3  every LEASED worker belongs to exactly one GRANTED lease, and the reverse.
NM4  the free capacity of the GPU instances equals the GPUs available.
NM5  ``idle`` holds exactly the IDLE workers, each once.

The pool keeps at most one idle worker per CPU for long: a worker idle for
``EngineConfig.idle_worker_timeout`` beyond that is asked to exit (``ExitIfIdle``, state
EXITING) and exits only if it holds nothing (``ExitIfIdleReply``), as Ray's workers refuse to
exit while they own objects; one that stays is idle again.
"""
from __future__ import annotations

import dataclasses
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.object_store import ObjectStore
from rayref.core.resources import GpuInstances, Resources
from rayref.core.scheduling import make_policy

NO_RESOURCES = Resources()
FREED_MEMORY = 100_000
"""How many freed object ids a node remembers, to answer late pulls and fetches at once."""


class LeaseState(enum.Enum):
    QUEUED = "queued"
    INFEASIBLE = "infeasible"
    AWAITING_WORKER = "awaiting_worker"
    GRANTED = "granted"


class WorkerState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    LEASED = "leased"
    EXITING = "exiting"
    """Asked to exit (idle beyond the pool's size); its answer decides."""


@dataclass(slots=True)
class Lease:
    request: p.RequestWorkerLease
    state: LeaseState = LeaseState.QUEUED
    worker_id: str = ""
    allocated: Resources = NO_RESOURCES
    gpu_ids: tuple[int, ...] = ()
    blocked: bool = False
    warned: bool = False


@dataclass(slots=True)
class Pull:
    requesters: list[str]
    locations: tuple[str, ...]
    tried: int = 0


@dataclass(slots=True)
class WorkerRecord:
    worker_id: str
    state: WorkerState
    lease_id: str = ""
    idle_since: float = 0.0


@dataclass
class NodeManager:
    node_id: str
    total: Resources
    config: EngineConfig
    rng: Any
    object_store_memory: int
    is_head: bool = False
    labels: tuple = ()
    address: str = ""
    """Where the node can be reached (a transport's endpoint); the node id if empty."""
    available: Resources = NO_RESOURCES
    view: tuple[p.NodeInfo, ...] = ()
    leases: dict[str, Lease] = field(default_factory=dict)
    queue: dict[str, None] = field(default_factory=dict)
    awaiting_worker: deque = field(default_factory=deque)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    idle: deque = field(default_factory=deque)
    pulls: dict[str, Pull] = field(default_factory=dict)
    awaiting_put: dict[str, list[str]] = field(default_factory=dict)
    freed: dict[str, None] = field(default_factory=dict)
    guesses: dict[str, p.NodeInfo] = field(default_factory=dict)
    clients: dict[str, None] = field(default_factory=dict)
    """Local processes other than its workers (drivers) that asked this node for something."""
    out: list = field(default_factory=list)
    now: float = 0.0
    report_armed: bool = False
    reap_armed: bool = False
    worker_seq: int = 0
    starting: int = 0

    def __post_init__(self):
        self.available = self.total
        self.gpus = GpuInstances(int(self.total.get("GPU")))
        self.store = ObjectStore(self.object_store_memory)
        self.policy = make_policy(self.config)
        self.handlers = {
            p.RequestWorkerLease: self._on_request_lease,
            p.ReturnWorkerLease: self._on_return_lease,
            p.CancelLease: self._on_cancel_lease,
            p.WorkerRegistered: self._on_worker_registered,
            p.ExitIfIdleReply: self._on_exit_if_idle_reply,
            p.WorkerExited: self._on_worker_exited,
            p.WorkerBlocked: self._on_worker_blocked,
            p.WorkerUnblocked: self._on_worker_unblocked,
            p.ClusterView: self._on_cluster_view,
            p.ClusterQuiescent: self._on_quiescent,
            p.TimerFired: self._on_timer,
            p.PutObject: self._on_put_object,
            p.PullObject: self._on_pull_object,
            p.FetchObject: self._on_fetch_object,
            p.ObjectTransfer: self._on_object_transfer,
            p.FreeObjects: self._on_free_objects,
            p.ObjectSpilled: lambda m: self.store.replace_spilled(m.object_id, m.blob),
            p.PeerUnreachable: self._on_peer_unreachable,
            p.ProcessDied: self._on_process_died,
            p.NodeDied: self._on_node_died,
        }

    # ------------------------------------------------------------------ the one way in

    def start(self) -> list:
        self._send(p.CONTROL_PLANE, p.RegisterNode(node=self.info()))
        if self.config.prestart_workers:
            for _ in range(int(self.total.get("CPU"))):
                self._start_worker()
        return self._drain()

    def handle(self, msg: p.Message, now: float) -> list:
        self.now = now
        self.handlers[type(msg)](msg)
        return self._drain()

    def _drain(self) -> list:
        out, self.out = self.out, []
        return out

    def _send(self, to: str, msg: p.Message) -> None:
        self.out.append(p.Send(to=to, msg=msg))

    def info(self) -> p.NodeInfo:
        return p.NodeInfo(node_id=self.node_id, address=self.address or self.node_id, total=self.total,
                          available=self.available, is_head=self.is_head, labels=self.labels)

    def _nodes(self) -> list[p.NodeInfo]:
        if not self.view:
            return [self.info()]
        guesses = self.guesses
        guesses[self.node_id] = self.info()
        return [guesses.get(n.node_id, n) for n in self.view]

    # ------------------------------------------------------------------ leases

    def _on_request_lease(self, msg: p.RequestWorkerLease) -> None:
        self._note_client(msg.requester)
        lease = Lease(msg)
        self.leases[msg.lease_id] = lease
        if msg.grant_or_reject or msg.spilled:
            if self._allocate(lease):
                self._assign_worker(lease)
            else:
                self._reject(lease, "spilled here but the resources are no longer available", final=False)
            return
        self._place(lease)

    def _place(self, lease: Lease) -> None:
        spec = lease.request.spec
        placement = self.policy.pick(spec.resources, spec.strategy, self.node_id, self._nodes(), self.rng)
        if placement.node_id == self.node_id:
            self._enqueue(lease)
        elif placement.node_id:
            self._spill(lease, placement.node_id)
        elif self._dead_affinity_target(spec):
            self._reject(lease, placement.reason, final=True)
        else:
            self._mark_infeasible(lease, placement.reason)

    def _dead_affinity_target(self, spec: p.TaskSpec) -> bool:
        if spec.strategy.kind != "NODE_AFFINITY" or spec.strategy.soft:
            return False
        return any(n.node_id == spec.strategy.node_id and not n.alive for n in self.view)

    def _enqueue(self, lease: Lease) -> None:
        lease.state = LeaseState.QUEUED
        self.queue[lease.request.lease_id] = None
        self._dispatch()

    def _spill(self, lease: Lease, node_id: str) -> None:
        """Spill to ``node_id``, and guess that node has that much less until the next view."""
        node = self.guesses.get(node_id) or next(n for n in self.view if n.node_id == node_id)
        self.guesses[node_id] = dataclasses.replace(node, available=node.available - lease.request.spec.resources)
        self.queue.pop(lease.request.lease_id, None)
        del self.leases[lease.request.lease_id]
        self._send(lease.request.requester, p.LeaseSpilled(lease_id=lease.request.lease_id, node_id=node_id))

    def _reject(self, lease: Lease, reason: str, final: bool) -> None:
        self.queue.pop(lease.request.lease_id, None)
        del self.leases[lease.request.lease_id]
        self._send(lease.request.requester, p.LeaseRejected(lease_id=lease.request.lease_id, reason=reason, final=final))

    def _mark_infeasible(self, lease: Lease, reason: str) -> None:
        lease.state = LeaseState.INFEASIBLE
        if not lease.warned:
            lease.warned = True
            self._send(lease.request.requester, p.LeaseInfeasible(lease_id=lease.request.lease_id, reason=reason))

    def _dispatch(self) -> None:
        for lease_id in list(self.queue):
            lease = self.leases[lease_id]
            if self._allocate(lease):
                del self.queue[lease_id]
                self._assign_worker(lease)

    def _allocate(self, lease: Lease) -> bool:
        need = lease.request.spec.resources
        if not need.fits_in(self.available):
            return False
        gpu_ids = self.gpus.allocate(need.raw("GPU"))
        if gpu_ids is None:
            return False
        lease.gpu_ids = gpu_ids
        lease.allocated = need
        self.available = self.available - need
        self._resources_changed()
        return True

    def _release(self, lease: Lease) -> None:
        back = lease.allocated
        if lease.blocked:
            back = back - back.only(("CPU",))
        self.available = self.available + back
        self.gpus.release(lease.gpu_ids, lease.allocated.raw("GPU"))
        lease.allocated = NO_RESOURCES
        self._resources_changed()

    def _assign_worker(self, lease: Lease) -> None:
        if self.idle:
            self._grant(lease, self.idle.popleft())
            return
        lease.state = LeaseState.AWAITING_WORKER
        self.awaiting_worker.append(lease.request.lease_id)
        if self.starting < len(self.awaiting_worker):
            self._start_worker()

    def _grant(self, lease: Lease, worker_id: str) -> None:
        record = self.workers[worker_id]
        record.state, record.lease_id = WorkerState.LEASED, lease.request.lease_id
        lease.state, lease.worker_id = LeaseState.GRANTED, worker_id
        self._send(lease.request.requester, p.LeaseGranted(
            lease_id=lease.request.lease_id, worker_id=worker_id, node_id=self.node_id, gpu_ids=lease.gpu_ids))

    def _on_return_lease(self, msg: p.ReturnWorkerLease) -> None:
        lease = self.leases.pop(msg.lease_id, None)
        if lease is None:
            return
        self._release(lease)
        if msg.worker_exiting:
            self.workers.pop(lease.worker_id, None)
            self.out.append(p.KillWorker(worker_id=lease.worker_id, reason="lease returned with exit"))
        else:
            self._worker_available(lease.worker_id)
        self._dispatch()

    def _on_cancel_lease(self, msg: p.CancelLease) -> None:
        lease = self.leases.get(msg.lease_id)
        if lease is None or lease.state == LeaseState.GRANTED:
            return
        del self.leases[msg.lease_id]
        self.queue.pop(msg.lease_id, None)
        if lease.state == LeaseState.AWAITING_WORKER:
            self.awaiting_worker.remove(msg.lease_id)
            self._release(lease)
            self._dispatch()

    def _on_worker_blocked(self, msg: p.WorkerBlocked) -> None:
        lease = self._lease_of(msg.worker_id)
        if lease is None or lease.blocked:
            return
        lease.blocked = True
        self.available = self.available + lease.allocated.only(("CPU",))
        self._resources_changed()
        self._dispatch()

    def _on_worker_unblocked(self, msg: p.WorkerUnblocked) -> None:
        lease = self._lease_of(msg.worker_id)
        if lease is None or not lease.blocked:
            return
        lease.blocked = False
        self.available = self.available - lease.allocated.only(("CPU",))
        self._resources_changed()

    def _lease_of(self, worker_id: str) -> Lease | None:
        record = self.workers.get(worker_id)
        return self.leases.get(record.lease_id) if record and record.lease_id else None

    # ------------------------------------------------------------------ worker pool

    def _start_worker(self) -> None:
        self.worker_seq += 1
        worker_id = f"{self.node_id}.w{self.worker_seq}"
        self.workers[worker_id] = WorkerRecord(worker_id, WorkerState.STARTING)
        self.starting += 1
        self.out.append(p.StartWorker(worker_id=worker_id, node_id=self.node_id))

    def _on_worker_registered(self, msg: p.WorkerRegistered) -> None:
        record = self.workers.get(msg.worker_id)
        if record is None or record.state != WorkerState.STARTING:
            return
        self.starting -= 1
        self._worker_available(msg.worker_id)

    def _worker_available(self, worker_id: str) -> None:
        record = self.workers[worker_id]
        record.lease_id = ""
        if self.awaiting_worker:
            self._grant(self.leases[self.awaiting_worker.popleft()], worker_id)
        else:
            record.state, record.idle_since = WorkerState.IDLE, self.now
            self.idle.append(worker_id)
            self._arm_reaping()

    def _pool_size(self) -> int:
        return int(self.total.get("CPU"))

    def _arm_reaping(self) -> None:
        if len(self.idle) > self._pool_size() and not self.reap_armed:
            self.reap_armed = True
            self.out.append(p.StartTimer(key=("reap",), delay=self.config.idle_worker_timeout))

    def _reap_idle(self) -> None:
        """Ask the idle workers beyond the pool's size that have waited long enough to exit, oldest first."""
        self.reap_armed = False
        for worker_id in list(self.idle)[:len(self.idle) - self._pool_size()]:
            record = self.workers[worker_id]
            if self.now - record.idle_since >= self.config.idle_worker_timeout:
                self.idle.remove(worker_id)
                record.state = WorkerState.EXITING
                self._send(worker_id, p.ExitIfIdle(worker_id=worker_id))
        self._arm_reaping()

    def _on_exit_if_idle_reply(self, msg: p.ExitIfIdleReply) -> None:
        record = self.workers.get(msg.worker_id)
        if record is None or record.state != WorkerState.EXITING:
            return
        if msg.exiting:
            del self.workers[msg.worker_id]
            self.out.append(p.KillWorker(worker_id=msg.worker_id, reason="idle beyond the pool's size"))
        else:
            self._worker_available(msg.worker_id)

    def _on_worker_exited(self, msg: p.WorkerExited) -> None:
        """A process of this node is gone (a worker, or a driver attached here)."""
        self._send(p.CONTROL_PLANE, p.ProcessDied(address=msg.worker_id))
        record = self.workers.pop(msg.worker_id, None)
        if record is None:
            return
        if record.state == WorkerState.STARTING:
            self.starting -= 1
            if self.starting < len(self.awaiting_worker):
                self._start_worker()
        elif record.state == WorkerState.IDLE:
            self.idle.remove(msg.worker_id)
        elif record.state == WorkerState.EXITING:
            pass
        else:
            lease = self.leases.pop(record.lease_id)
            self._release(lease)
            self._send(lease.request.requester, p.LeasedWorkerDied(
                lease_id=record.lease_id, worker_id=msg.worker_id, reason=msg.reason))
            self._dispatch()

    # ------------------------------------------------------------------ cluster view

    def _resources_changed(self) -> None:
        if not self.report_armed:
            self.report_armed = True
            self.out.append(p.StartTimer(key=("report",), delay=self.config.report_period))

    def _on_timer(self, msg: p.TimerFired) -> None:
        if msg.key == ("reap",):
            self._reap_idle()
            return
        self.report_armed = False
        self._send(p.CONTROL_PLANE, p.ResourceReport(node_id=self.node_id, available=self.available))

    def _on_cluster_view(self, msg: p.ClusterView) -> None:
        self.view = msg.nodes
        self.guesses = {}
        for lease_id in list(self.leases):
            lease = self.leases[lease_id]
            if lease.state == LeaseState.INFEASIBLE:
                self._place(lease)
            elif lease.state == LeaseState.QUEUED and not lease.request.spilled \
                    and not lease.request.grant_or_reject:
                self.queue.pop(lease_id)
                self._place(lease)

    def _on_quiescent(self, msg: p.ClusterQuiescent) -> None:
        for lease_id in list(self.leases):
            lease = self.leases[lease_id]
            if lease.state == LeaseState.INFEASIBLE:
                spec = lease.request.spec
                self._reject(lease, f"{spec.name} needs {spec.resources.to_dict()}, which no node "
                                    f"in the cluster can ever provide", final=True)

    def _on_process_died(self, msg: p.ProcessDied) -> None:
        self.clients.pop(msg.address, None)
        self._release_leases_of(lambda requester: requester == msg.address)
        self._free_owned_by(lambda owner: owner == msg.address)

    def _free_owned_by(self, dead) -> None:
        """Primaries whose owner died: no one is left to free them, and their readers get
        ``OwnerDiedError`` anyway (Ray unpins them too)."""
        orphans = self.store.owned_by(dead)
        if orphans:
            self._on_free_objects(p.FreeObjects(object_ids=tuple(orphans)))

    def _on_node_died(self, msg: p.NodeDied) -> None:
        """Another node is gone: it is dead in the view, its processes are dead, pulls move off it."""
        self.view = tuple(dataclasses.replace(n, alive=False) if n.node_id == msg.node_id else n for n in self.view)
        self.guesses.pop(msg.node_id, None)
        self._release_leases_of(lambda requester: requester.startswith(msg.node_id + "."))
        self._free_owned_by(lambda owner: owner.startswith(msg.node_id + "."))
        for object_id in [o for o, pull in self.pulls.items() if self._fetching_from(pull, msg.node_id)]:
            self._fetch_next(object_id)
        local = [w for w, record in self.workers.items() if record.state != WorkerState.STARTING]
        for address in local + list(self.clients):
            self._send(address, msg)

    def _note_client(self, address: str) -> None:
        if address.startswith(self.node_id + ".") and address not in self.workers:
            self.clients[address] = None

    def _alive(self, node_id: str) -> bool:
        return all(n.alive for n in self.view if n.node_id == node_id)

    def _release_leases_of(self, dead) -> None:
        """Workers leased to dead processes run work nobody will collect: kill them, free their resources."""
        held = [(i, lease) for i, lease in self.leases.items() if dead(lease.request.requester)]
        for lease_id, lease in held:
            if lease.state != LeaseState.GRANTED:
                self._on_cancel_lease(p.CancelLease(lease_id=lease_id))
        for lease_id, lease in held:
            if lease.state == LeaseState.GRANTED:
                self._on_return_lease(p.ReturnWorkerLease(lease_id=lease_id, worker_id=lease.worker_id,
                                                          worker_exiting=True))

    def _on_peer_unreachable(self, msg: p.PeerUnreachable) -> None:
        """A requester died before its grant arrived: give the lease back. Other bounces need nothing."""
        original = msg.original
        if isinstance(original, p.LeaseGranted):
            self._on_return_lease(p.ReturnWorkerLease(lease_id=original.lease_id, worker_id=original.worker_id))

    # ------------------------------------------------------------------ objects

    def _on_put_object(self, msg: p.PutObject) -> None:
        if msg.object_id in self.freed:
            if msg.reply_to:
                self._send(msg.reply_to, p.ObjectStored(object_id=msg.object_id))
            return
        for object_id in self.store.add(msg.object_id, msg.blob, msg.owner, pinned=True):
            self.out.append(p.SpillObject(object_id=object_id, blob=self.store.objects[object_id].blob))
        if msg.reply_to:
            self._send(msg.reply_to, p.ObjectStored(object_id=msg.object_id))
        for node in self.awaiting_put.pop(msg.object_id, ()):
            self._send_copy(node, msg.object_id, msg.blob)
        self._serve_pull(msg.object_id, msg.blob)

    def _on_pull_object(self, msg: p.PullObject) -> None:
        self._note_client(msg.requester)
        blob = self.store.get(msg.object_id)
        if blob is not None:
            self._send(msg.requester, p.ObjectLocal(object_id=msg.object_id, blob=blob))
            return
        pull = self.pulls.get(msg.object_id)
        if pull is not None:
            pull.requesters.append(msg.requester)
            return
        if self.node_id in msg.locations and msg.object_id not in self.freed:
            self.pulls[msg.object_id] = Pull([msg.requester], msg.locations, tried=len(msg.locations))
            return
        locations = tuple(n for n in msg.locations if n != self.node_id)
        if not locations:
            self._send(msg.requester, p.ObjectUnavailable(object_id=msg.object_id, reason="it was freed"))
            return
        self.pulls[msg.object_id] = Pull([msg.requester], locations)
        self._fetch_next(msg.object_id)

    def _fetch_next(self, object_id: str) -> None:
        pull = self.pulls[object_id]
        while pull.tried < len(pull.locations) and not self._alive(pull.locations[pull.tried]):
            pull.tried += 1
        if pull.tried >= len(pull.locations):
            del self.pulls[object_id]
            for requester in pull.requesters:
                self._send(requester, p.ObjectUnavailable(object_id=object_id, reason="no copy could be fetched"))
            return
        source = pull.locations[pull.tried]
        pull.tried += 1
        self._send(source, p.FetchObject(object_id=object_id, requester_node=self.node_id))

    def _fetching_from(self, pull: Pull, node_id: str) -> bool:
        """The pull's fetch in flight is from ``node_id`` (not a pull waiting for a put here)."""
        return self.node_id not in pull.locations and pull.locations[pull.tried - 1] == node_id

    def _on_fetch_object(self, msg: p.FetchObject) -> None:
        blob = self.store.get(msg.object_id)
        if blob is None and msg.object_id not in self.freed:
            self.awaiting_put.setdefault(msg.object_id, []).append(msg.requester_node)
            return
        self._send_copy(msg.requester_node, msg.object_id, blob)

    def _send_copy(self, node: str, object_id: str, blob: p.Blob | None) -> None:
        """``ObjectTransfer``; the primary's node remembers where copies went, to free them with it."""
        if blob is not None:
            self.store.note_copy(object_id, node)
        self._send(node, p.ObjectTransfer(object_id=object_id, blob=blob, from_node=self.node_id))

    def _on_object_transfer(self, msg: p.ObjectTransfer) -> None:
        if msg.object_id not in self.pulls:
            return
        if msg.blob is None:
            self._fetch_next(msg.object_id)
            return
        self.store.add(msg.object_id, msg.blob, owner="", pinned=False)
        self._serve_pull(msg.object_id, msg.blob)

    def _serve_pull(self, object_id: str, blob: p.Blob) -> None:
        pull = self.pulls.pop(object_id, None)
        for requester in pull.requesters if pull else ():
            self._send(requester, p.ObjectLocal(object_id=object_id, blob=blob))

    def _on_free_objects(self, msg: p.FreeObjects) -> None:
        for object_id in msg.object_ids:
            pull = self.pulls.pop(object_id, None) if object_id not in self.store else None
            for requester in pull.requesters if pull else ():
                self._send(requester, p.ObjectUnavailable(object_id=object_id, reason="it was freed"))
            self.freed[object_id] = None
            if len(self.freed) > FREED_MEMORY:
                del self.freed[next(iter(self.freed))]
            entry = self.store.remove(object_id)
            for node in entry.copies if entry else ():
                self._send(node, p.FreeObjects(object_ids=(object_id,)))
            for node in self.awaiting_put.pop(object_id, ()):
                self._send_copy(node, object_id, None)

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        allocated = NO_RESOURCES
        for lease in self.leases.values():
            if lease.state in (LeaseState.GRANTED, LeaseState.AWAITING_WORKER):
                held = lease.allocated - lease.allocated.only(("CPU",)) if lease.blocked else lease.allocated
                allocated = allocated + held
        assert self.available == self.total - allocated, f"NM1: {self.available} != {self.total} - {allocated}"
        assert self.gpus.total_free() == self.available.raw("GPU"), "NM4: GPU instances disagree with GPU available"
        for worker_id, record in self.workers.items():
            if record.state == WorkerState.LEASED:
                lease = self.leases.get(record.lease_id)
                assert lease is not None and lease.worker_id == worker_id, "NM3: leased worker without lease"
        for lease_id, lease in self.leases.items():
            if lease.state == LeaseState.GRANTED:
                assert self.workers[lease.worker_id].lease_id == lease_id, "NM3: lease without its worker"
        idle = [w for w, record in self.workers.items() if record.state == WorkerState.IDLE]
        assert sorted(idle) == sorted(self.idle) and len(set(self.idle)) == len(self.idle), "NM5: idle list drifted"
        self.store.validate()
