"""The control plane: node membership, the cluster resource view, the actor directory.

It runs on the head node. Node managers register and report their available resources; the
control plane broadcasts the resulting view to every node manager, at most once per report
period and only when something changed. Actors are registered here by their owner; the
control plane picks a node with the scheduling policy, leases a worker there
(grant-or-reject), pushes the creation task, and publishes every state change to the
actor's subscribers::

    PENDING_CREATION --created--> ALIVE --worker or node died, restarts left--> RESTARTING --> ALIVE
           |                        |--worker or node died / killed, none left--> DEAD
           '--creation failed / killed--> DEAD

A node's death (``NodeDied``, from the transport, the failure detector) is the death of every
process on it: the node is marked dead in the view, which is broadcast at once; the actors
its processes owned die with them (as for ``ProcessDied``); the actors that ran on it are
restarted elsewhere if ``max_restarts`` allows; then every live node manager hears of it.

Invariant CP1: a name in a namespace belongs to at most one actor that is not DEAD.
Invariant CP2: an ALIVE actor has a worker address and a node.
Invariant CP3: no actor that is not DEAD runs on, or waits for a lease from, a dead node.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.scheduling import make_policy


class ActorState(enum.Enum):
    PENDING_CREATION = "PENDING_CREATION"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


@dataclass(slots=True)
class ActorRecord:
    spec: p.TaskSpec
    args: tuple[p.ResolvedArg, ...]
    state: ActorState = ActorState.PENDING_CREATION
    worker_id: str = ""
    node_id: str = ""
    lease_id: str = ""
    lease_node: str = ""
    num_restarts: int = 0
    death_cause: str = ""
    no_restart: bool = False
    subscribers: dict[str, None] = field(default_factory=dict)

    def info(self) -> p.ActorInfo:
        opts = self.spec.actor
        return p.ActorInfo(actor_id=self.spec.actor_id, state=self.state.value, name=opts.name,
                           namespace=opts.namespace, class_name=self.spec.name, address=self.worker_id,
                           node_id=self.node_id, num_restarts=self.num_restarts,
                           death_cause=self.death_cause)


@dataclass
class ControlPlane:
    config: EngineConfig
    rng: Any
    nodes: dict[str, p.NodeInfo] = field(default_factory=dict)
    actors: dict[str, ActorRecord] = field(default_factory=dict)
    named: dict[tuple[str, str], str] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    leases: dict[str, str] = field(default_factory=dict)
    early_subscribers: dict[str, dict[str, None]] = field(default_factory=dict)
    out: list = field(default_factory=list)
    now: float = 0.0
    view_dirty: bool = False
    broadcast_armed: bool = False
    lease_seq: int = 0

    def __post_init__(self):
        self.policy = make_policy(self.config)
        self.handlers = {
            p.RegisterNode: self._on_register_node,
            p.ResourceReport: self._on_resource_report,
            p.TimerFired: self._on_timer,
            p.RegisterActor: self._on_register_actor,
            p.SubscribeActor: self._on_subscribe,
            p.KillActor: self._on_kill_actor,
            p.LeaseGranted: self._on_lease_granted,
            p.LeaseRejected: self._on_lease_failed,
            p.LeaseSpilled: self._on_lease_failed,
            p.LeaseInfeasible: lambda msg: None,
            p.LeasedWorkerDied: self._on_worker_died,
            p.TaskReply: self._on_creation_reply,
            p.Query: self._on_query,
            p.ClusterQuiescent: self._on_quiescent,
            p.ProcessDied: self._on_process_died,
            p.NodeDied: self._on_node_died,
            p.PeerUnreachable: self._on_peer_unreachable,
        }

    def handle(self, msg: p.Message, now: float) -> list:
        self.now = now
        self.handlers[type(msg)](msg)
        out, self.out = self.out, []
        return out

    def _send(self, to: str, msg: p.Message) -> None:
        self.out.append(p.Send(to=to, msg=msg))

    # ------------------------------------------------------------------ nodes and the view

    def _on_register_node(self, msg: p.RegisterNode) -> None:
        """A joining node gets the view at once; everyone else with the next broadcast."""
        self.nodes[msg.node.node_id] = msg.node
        self._send(msg.node.node_id, p.ClusterView(nodes=tuple(self.nodes.values())))
        self._view_changed()
        self._place_unplaced()

    def _on_resource_report(self, msg: p.ResourceReport) -> None:
        node = self.nodes.get(msg.node_id)
        if node is not None and node.available != msg.available:
            self.nodes[msg.node_id] = p.NodeInfo(
                node_id=node.node_id, address=node.address, total=node.total, available=msg.available,
                alive=node.alive, is_head=node.is_head, labels=node.labels)
            self._view_changed()

    def _view_changed(self) -> None:
        self.view_dirty = True
        if not self.broadcast_armed:
            self.broadcast_armed = True
            self.out.append(p.StartTimer(key=("broadcast",), delay=self.config.report_period))

    def _on_timer(self, msg: p.TimerFired) -> None:
        self.broadcast_armed = False
        if self.view_dirty:
            self._broadcast()

    def _broadcast(self) -> None:
        self.view_dirty = False
        view = p.ClusterView(nodes=tuple(self.nodes.values()))
        for node_id, node in self.nodes.items():
            if node.alive:
                self._send(node_id, view)
        self._place_unplaced()

    # ------------------------------------------------------------------ actors

    def _on_register_actor(self, msg: p.RegisterActor) -> None:
        spec = msg.spec
        opts = spec.actor
        if opts.name:
            key = (opts.namespace, opts.name)
            holder = self.named.get(key)
            if holder is not None and self.actors[holder].state != ActorState.DEAD:
                self._send(spec.owner, p.ActorRegistrationFailed(
                    actor_id=spec.actor_id,
                    reason=f"The name {opts.name!r} (namespace={opts.namespace!r}) is already taken"))
                return
            self.named[key] = spec.actor_id
        record = ActorRecord(spec, msg.args)
        record.subscribers[spec.owner] = None
        record.subscribers.update(self.early_subscribers.pop(spec.actor_id, {}))
        self.actors[spec.actor_id] = record
        if msg.creation_error:
            record.death_cause = msg.creation_error
            self._mark_dead(record)
            return
        self._publish(record)
        self._schedule(spec.actor_id)

    def _schedule(self, actor_id: str) -> None:
        record = self.actors[actor_id]
        if record.lease_id in self.leases:
            return
        spec = record.spec
        placement = self.policy.pick(spec.resources, spec.strategy, spec.owner_node,
                                     [n for n in self.nodes.values()], self.rng)
        if not placement.ready:
            if actor_id not in self.unplaced:
                self.unplaced.append(actor_id)
            return
        self.lease_seq += 1
        record.lease_id, record.lease_node = f"cp.l{self.lease_seq}", placement.node_id
        self.leases[record.lease_id] = actor_id
        self._send(placement.node_id, p.RequestWorkerLease(
            lease_id=record.lease_id, requester=p.CONTROL_PLANE, spec=spec, grant_or_reject=True))

    def _place_unplaced(self) -> None:
        waiting, self.unplaced = self.unplaced, []
        for actor_id in waiting:
            if self.actors[actor_id].state in (ActorState.PENDING_CREATION, ActorState.RESTARTING):
                self._schedule(actor_id)

    def _on_process_died(self, msg: p.ProcessDied) -> None:
        """The actors a dead process created die with it; every node frees the workers leased to it."""
        self._release_owned_by(lambda address: address == msg.address)
        self._to_live_nodes(msg)

    def _on_node_died(self, msg: p.NodeDied) -> None:
        """Every process of the node died: what they owned dies, what ran there is lost.

        The view goes out before the ``NodeDied`` (same pair, FIFO1), so a node manager already
        sees the node dead when its processes ask it for new leases.
        """
        node = self.nodes.get(msg.node_id)
        if node is None or not node.alive:
            return
        self.nodes[msg.node_id] = dataclasses.replace(node, alive=False)
        self._release_owned_by(lambda address: address.startswith(msg.node_id + "."))
        for actor_id, record in self.actors.items():
            if record.state == ActorState.DEAD:
                continue
            if record.node_id == msg.node_id:
                self._actor_lost(record, f"the actor's node {msg.node_id} died ({msg.reason})")
            elif record.lease_node == msg.node_id and self.leases.pop(record.lease_id, None):
                self.unplaced.append(actor_id)
        self._broadcast()
        self._to_live_nodes(msg)

    def _release_owned_by(self, dead) -> None:
        """Non-detached actors whose owner is ``dead`` are killed; dead subscribers are dropped."""
        for record in self.actors.values():
            for subscriber in [s for s in record.subscribers if dead(s)]:
                del record.subscribers[subscriber]
            owner = record.spec.owner
            if dead(owner) and not record.spec.actor.detached and record.state != ActorState.DEAD:
                record.death_cause = f"its owner {owner} died"
                self._kill(record, no_restart=True)

    def _to_live_nodes(self, msg: p.Message) -> None:
        for node_id, node in self.nodes.items():
            if node.alive:
                self._send(node_id, msg)

    def _on_quiescent(self, msg: p.ClusterQuiescent) -> None:
        """Nothing will change any more: actors that no node can ever host are dead."""
        for actor_id in list(self.unplaced):
            record = self.actors[actor_id]
            placement = self.policy.pick(record.spec.resources, record.spec.strategy, record.spec.owner_node,
                                         list(self.nodes.values()), self.rng)
            if not placement.node_id:
                self.unplaced.remove(actor_id)
                record.death_cause = f"ActorUnschedulableError: {placement.reason}"
                self._mark_dead(record)

    def _on_lease_failed(self, msg) -> None:
        actor_id = self.leases.pop(msg.lease_id, None)
        if actor_id is not None:
            self.unplaced.append(actor_id)

    def _on_lease_granted(self, msg: p.LeaseGranted) -> None:
        actor_id = self.leases.get(msg.lease_id)
        record = self.actors.get(actor_id) if actor_id else None
        if record is None or record.state == ActorState.DEAD:
            self.leases.pop(msg.lease_id, None)
            self._send(msg.node_id, p.ReturnWorkerLease(lease_id=msg.lease_id, worker_id=msg.worker_id,
                                                        worker_exiting=True))
            return
        record.worker_id, record.node_id = msg.worker_id, msg.node_id
        spec = dataclasses.replace(record.spec, attempt=record.num_restarts)
        self._send(msg.worker_id, p.PushTask(task_id=spec.task_id, spec=spec,
                                             reply_to=p.CONTROL_PLANE, args=record.args, lease_id=msg.lease_id, gpu_ids=msg.gpu_ids))

    def _on_creation_reply(self, msg: p.TaskReply) -> None:
        """The actor's owner registers what the constructor borrowed, before it can release the
        arguments (this reply reaches it before the ALIVE that lets it, on the same stream)."""
        record = self._record_of_worker(msg.worker_id)
        if record is None:
            return
        if msg.borrowed:
            self._send(record.spec.owner, msg)
        failed = any(r.blob is not None and r.blob.is_error for r in msg.returns)
        if failed:
            record.death_cause = "the actor's constructor raised an exception"
            self._kill(record, no_restart=True)
            return
        record.state = ActorState.ALIVE
        self._publish(record)

    def _record_of_worker(self, worker_id: str) -> ActorRecord | None:
        for record in self.actors.values():
            if record.worker_id == worker_id and record.state != ActorState.DEAD:
                return record
        return None

    def _on_worker_died(self, msg: p.LeasedWorkerDied) -> None:
        actor_id = self.leases.pop(msg.lease_id, None)
        record = self.actors.get(actor_id) if actor_id else None
        if record is not None and record.state != ActorState.DEAD:
            self._actor_lost(record, f"the actor's worker process died ({msg.reason})")

    def _actor_lost(self, record: ActorRecord, cause: str) -> None:
        """The actor's worker is gone: restart it elsewhere if allowed, else it is dead of ``cause``."""
        self.leases.pop(record.lease_id, None)
        record.worker_id = record.node_id = ""
        if self._may_restart(record):
            record.num_restarts += 1
            record.state = ActorState.RESTARTING
            self._publish(record)
            self._schedule(record.spec.actor_id)
            return
        record.death_cause = cause
        self._mark_dead(record)

    def _may_restart(self, record: ActorRecord) -> bool:
        limit = record.spec.actor.max_restarts
        return not record.no_restart and (limit == -1 or record.num_restarts < limit)

    def _on_kill_actor(self, msg: p.KillActor) -> None:
        record = self.actors.get(msg.actor_id)
        if record is None or record.state == ActorState.DEAD:
            return
        record.death_cause = msg.reason or "the actor was killed by ray.kill()"
        self._kill(record, msg.no_restart)

    def _kill(self, record: ActorRecord, no_restart: bool) -> None:
        record.no_restart |= no_restart
        self.leases.pop(record.lease_id, None)
        if record.worker_id:
            self._send(record.node_id, p.ReturnWorkerLease(lease_id=record.lease_id, worker_id=record.worker_id,
                                                           worker_exiting=True))
            record.worker_id = record.node_id = ""
        if not record.no_restart and self._may_restart(record):
            record.num_restarts += 1
            record.state = ActorState.RESTARTING
            self._publish(record)
            self._schedule(record.spec.actor_id)
            return
        self._mark_dead(record)

    def _mark_dead(self, record: ActorRecord) -> None:
        record.state = ActorState.DEAD
        if record.lease_id in self.leases:
            del self.leases[record.lease_id]
        self._publish(record)

    def _publish(self, record: ActorRecord) -> None:
        change = p.ActorStateChanged(actor_id=record.spec.actor_id, info=record.info())
        for subscriber in record.subscribers:
            self._send(subscriber, change)

    def _on_subscribe(self, msg: p.SubscribeActor) -> None:
        """A handle can reach a borrower (and its subscription us) before the owner's registration."""
        record = self.actors.get(msg.actor_id)
        if record is None:
            self.early_subscribers.setdefault(msg.actor_id, {})[msg.subscriber] = None
            return
        record.subscribers[msg.subscriber] = None
        self._send(msg.subscriber, p.ActorStateChanged(actor_id=msg.actor_id, info=record.info()))

    def _on_peer_unreachable(self, msg: p.PeerUnreachable) -> None:
        original = msg.original
        if isinstance(original, p.ActorStateChanged):
            record = self.actors.get(original.actor_id)
            if record is not None:
                record.subscribers.pop(msg.to, None)

    # ------------------------------------------------------------------ queries

    def _on_query(self, msg: p.Query) -> None:
        if msg.what == "nodes":
            value = tuple(self.nodes.values())
        elif msg.what == "named_actor":
            actor_id = self.named.get((msg.namespace, msg.name))
            record = self.actors.get(actor_id) if actor_id else None
            alive = record is not None and record.state != ActorState.DEAD
            value = p.ActorInfo(**{**_fields(record.info()), "spec": record.spec}) if alive else None
        else:
            value = None
        self._send(msg.requester, p.QueryReply(request_id=msg.request_id, value=value))

    def validate(self) -> None:
        live_names: dict = {}
        for record in self.actors.values():
            opts = record.spec.actor
            if opts.name and record.state != ActorState.DEAD:
                key = (opts.namespace, opts.name)
                assert key not in live_names, f"CP1: two live actors named {key}"
                live_names[key] = record
            if record.state == ActorState.ALIVE:
                assert record.worker_id and record.node_id, "CP2: ALIVE actor without address"
            if record.state != ActorState.DEAD:
                used = [record.node_id] + ([record.lease_node] if record.lease_id in self.leases else [])
                assert all(self.nodes[n].alive for n in used if n), f"CP3: actor on dead node {used}"


def _fields(info: p.ActorInfo) -> dict:
    return {name: getattr(info, name) for name in info.__dataclass_fields__}
