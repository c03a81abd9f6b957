"""ControlPlane as a pure state machine: node membership, the view broadcast, the actor directory.

Invariants (rayref/core/control_plane.py): CP1 a name in a namespace belongs to at most one
actor that is not DEAD; CP2 an ALIVE actor has a worker address and a node.
"""
from __future__ import annotations

import random

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.control_plane import ActorState, ControlPlane
from rayref.core.resources import Resources

from engine_helpers import DRIVER, node_info, of_type, sends, sends_to, spec


def make_cp(*nodes: p.NodeInfo) -> ControlPlane:
    cp = ControlPlane(EngineConfig(), random.Random(0))
    for node in nodes:
        cp.handle(p.RegisterNode(node=node), 0.0)
    if nodes:
        cp.handle(p.TimerFired(key=("broadcast",)), 0.0)  # the start-up broadcast
    cp.validate()
    return cp


def actor_spec(actor_id: str = "a1", *, name: str = "", namespace: str = "ns", max_restarts: int = 0,
               resources: dict | None = None, owner: str = DRIVER) -> p.TaskSpec:
    return spec(f"{actor_id}.create", kind=p.TaskKind.ACTOR_CREATION, name="Counter", owner=owner,
                resources={"CPU": 1} if resources is None else resources, actor_id=actor_id,
                actor=p.ActorOptions(name=name, namespace=namespace, max_restarts=max_restarts))


def states(out, to: str = DRIVER) -> list[p.ActorInfo]:
    return [m.info for m in sends(out, p.ActorStateChanged, to=to)]


def ok_reply(s: p.TaskSpec, worker_id: str) -> p.TaskReply:
    return p.TaskReply(task_id=s.task_id, worker_id=worker_id,
                       returns=(p.ReturnValue(object_id=s.return_ids[0], blob=p.Blob(data=b"")),))


def create(cp: ControlPlane, s: p.TaskSpec, worker_id: str, now: float = 0.0) -> list:
    """Register an actor and walk it to ALIVE on ``worker_id``; returns all commands."""
    out = cp.handle(p.RegisterActor(actor_id=s.actor_id, spec=s), now)
    [(node, request)] = sends_to(out, p.RequestWorkerLease)
    out += cp.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id=worker_id, node_id=node), now)
    out += cp.handle(ok_reply(s, worker_id), now)
    cp.validate()
    return out


# ------------------------------------------------------------------ nodes and the view


def test_register_node_sends_the_joiner_the_view_and_broadcasts_it_once_per_period():
    """Joining nodes are told at once; the others learn with one coalesced broadcast (linear start-up)."""
    cp = ControlPlane(EngineConfig(), random.Random(0))
    n1, n2 = node_info("node-1", {"CPU": 2}), node_info("node-2", {"CPU": 4, "GPU": 1})
    out = cp.handle(p.RegisterNode(node=n1), 0.0)
    assert sends_to(out, p.ClusterView) == [("node-1", p.ClusterView(nodes=(n1,)))]
    assert of_type(out, p.StartTimer) == [p.StartTimer(key=("broadcast",), delay=cp.config.report_period)]
    out = cp.handle(p.RegisterNode(node=n2), 0.01)
    assert sends_to(out, p.ClusterView) == [("node-2", p.ClusterView(nodes=(n1, n2)))]
    assert of_type(out, p.StartTimer) == []
    out = cp.handle(p.TimerFired(key=("broadcast",)), 0.1)
    assert sorted(to for to, _ in sends_to(out, p.ClusterView)) == ["node-1", "node-2"]
    assert all(view.nodes == (n1, n2) for view in sends(out, p.ClusterView))


def test_resource_report_broadcasts_after_the_report_period_only_on_change():
    n1 = node_info("node-1", {"CPU": 2})
    cp = make_cp(n1)
    # unchanged availability: nothing to do
    assert cp.handle(p.ResourceReport(node_id="node-1", available=Resources({"CPU": 2})), 0.1) == []
    out = cp.handle(p.ResourceReport(node_id="node-1", available=Resources({"CPU": 1})), 0.2)
    assert sends(out) == []
    assert of_type(out, p.StartTimer) == [p.StartTimer(key=("broadcast",), delay=cp.config.report_period)]
    # a second change inside the period does not arm a second timer
    out = cp.handle(p.ResourceReport(node_id="node-1", available=Resources({"CPU": 0})), 0.25)
    assert out == []
    out = cp.handle(p.TimerFired(key=("broadcast",)), 0.3)
    [(to, view)] = sends_to(out, p.ClusterView)
    assert to == "node-1" and view.nodes[0].available == Resources({"CPU": 0})
    assert view.nodes[0].total == n1.total
    # nothing changed since: the next timer broadcasts nothing
    assert sends(cp.handle(p.TimerFired(key=("broadcast",)), 0.4)) == []


def test_query_nodes_returns_the_current_view():
    n1, n2 = node_info("node-1", {"CPU": 2}), node_info("node-2", {"CPU": 1})
    cp = make_cp(n1, n2)
    out = cp.handle(p.Query(request_id="q1", requester=DRIVER, what="nodes"), 0.0)
    assert sends_to(out, p.QueryReply) == [(DRIVER, p.QueryReply(request_id="q1", value=(n1, n2)))]


# ------------------------------------------------------------------ actor creation


def test_register_actor_publishes_pending_and_leases_grant_or_reject():
    """CP2 (validate), P-ACT-1: registration publishes PENDING_CREATION and asks a node for a
    grant-or-reject lease; the grant gets the creation push."""
    cp = make_cp(node_info("node-1", {"CPU": 2}))
    s = actor_spec()
    out = cp.handle(p.RegisterActor(actor_id="a1", spec=s), 0.0)
    [info] = states(out)
    assert info.state == "PENDING_CREATION" and info.actor_id == "a1"
    [(node, request)] = sends_to(out, p.RequestWorkerLease)
    assert node == "node-1"
    assert request.requester == p.CONTROL_PLANE and request.grant_or_reject is True and request.spec == s
    out = cp.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id="node-1.w1", node_id="node-1"), 0.1)
    [(to, push)] = sends_to(out, p.PushTask)
    assert to == "node-1.w1" and push.reply_to == p.CONTROL_PLANE and push.spec == s
    assert push.lease_id == request.lease_id
    cp.validate()
    out = cp.handle(ok_reply(s, "node-1.w1"), 0.2)
    [info] = states(out)
    assert info.state == "ALIVE" and info.address == "node-1.w1" and info.node_id == "node-1"
    cp.validate()  # CP2


def test_duplicate_actor_name_fails_registration():
    """CP1: a second live actor cannot take a name already held in the same namespace."""
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    create(cp, actor_spec("a1", name="counter"), "node-1.w1")
    out = cp.handle(p.RegisterActor(actor_id="a2", spec=actor_spec("a2", name="counter")), 0.1)
    [(to, failed)] = sends_to(out, p.ActorRegistrationFailed)
    assert to == DRIVER and failed.actor_id == "a2" and "counter" in failed.reason
    assert sends(out, p.RequestWorkerLease) == []
    assert "a2" not in cp.actors
    cp.validate()
    # the same name in another namespace is fine
    out = cp.handle(p.RegisterActor(actor_id="a3", spec=actor_spec("a3", name="counter", namespace="other")), 0.2)
    assert sends(out, p.ActorRegistrationFailed) == [] and sends(out, p.RequestWorkerLease)
    cp.validate()


def test_name_is_free_again_once_its_actor_is_dead():
    """CP1 counts only actors that are not DEAD."""
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    create(cp, actor_spec("a1", name="counter"), "node-1.w1")
    cp.handle(p.KillActor(actor_id="a1"), 0.1)
    assert cp.actors["a1"].state == ActorState.DEAD
    out = cp.handle(p.RegisterActor(actor_id="a2", spec=actor_spec("a2", name="counter")), 0.2)
    assert sends(out, p.ActorRegistrationFailed) == []
    assert cp.named[("ns", "counter")] == "a2"
    cp.validate()


def test_named_actor_query():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    s = actor_spec("a1", name="counter")
    create(cp, s, "node-1.w1")
    [reply] = sends(cp.handle(p.Query(request_id="q", requester=DRIVER, what="named_actor", name="counter",
                                      namespace="ns"), 0.1), p.QueryReply)
    assert reply.value.actor_id == "a1" and reply.value.state == "ALIVE" and reply.value.spec == s
    [reply] = sends(cp.handle(p.Query(request_id="q2", requester=DRIVER, what="named_actor", name="counter",
                                      namespace="elsewhere"), 0.1), p.QueryReply)
    assert reply.value is None


# ------------------------------------------------------------------ restarts and death


def test_actor_restarts_on_worker_death_within_max_restarts_then_dies():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    s = actor_spec("a1", max_restarts=1)
    out = create(cp, s, "node-1.w1")
    first_lease = sends(out, p.RequestWorkerLease)[0].lease_id
    out = cp.handle(p.LeasedWorkerDied(lease_id=first_lease, worker_id="node-1.w1", reason="oom"), 1.0)
    [info] = states(out)
    assert info.state == "RESTARTING" and info.num_restarts == 1 and info.address == ""
    [(node, request)] = sends_to(out, p.RequestWorkerLease)
    assert request.lease_id != first_lease and request.spec == s and request.grant_or_reject
    cp.validate()
    out = cp.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id="node-1.w2", node_id=node), 1.1)
    assert [to for to, _ in sends_to(out, p.PushTask)] == ["node-1.w2"]
    out = cp.handle(ok_reply(s, "node-1.w2"), 1.2)
    [info] = states(out)
    assert info.state == "ALIVE" and info.address == "node-1.w2" and info.num_restarts == 1
    cp.validate()
    out = cp.handle(p.LeasedWorkerDied(lease_id=request.lease_id, worker_id="node-1.w2", reason="oom again"), 2.0)
    [info] = states(out)
    assert info.state == "DEAD" and "oom again" in info.death_cause
    assert sends(out, p.RequestWorkerLease) == []
    cp.validate()
    # a late death notice for the dead actor changes nothing
    assert cp.handle(p.LeasedWorkerDied(lease_id=request.lease_id, worker_id="node-1.w2", reason="x"), 3.0) == []


def test_actor_with_no_restarts_dies_on_first_worker_death():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    out = create(cp, actor_spec("a1"), "node-1.w1")
    lease = sends(out, p.RequestWorkerLease)[0].lease_id
    out = cp.handle(p.LeasedWorkerDied(lease_id=lease, worker_id="node-1.w1", reason="boom"), 1.0)
    assert [i.state for i in states(out)] == ["DEAD"]
    assert sends(out, p.RequestWorkerLease) == []


def test_infinite_restarts():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    s = actor_spec("a1", max_restarts=-1)
    out = create(cp, s, "node-1.w0")
    lease = sends(out, p.RequestWorkerLease)[0].lease_id
    for i in range(1, 6):
        out = cp.handle(p.LeasedWorkerDied(lease_id=lease, worker_id=f"node-1.w{i - 1}", reason="x"), float(i))
        assert states(out)[0].state == "RESTARTING" and states(out)[0].num_restarts == i
        lease = sends(out, p.RequestWorkerLease)[0].lease_id
        cp.handle(p.LeaseGranted(lease_id=lease, worker_id=f"node-1.w{i}", node_id="node-1"), float(i))
        cp.handle(ok_reply(s, f"node-1.w{i}"), float(i))
        cp.validate()
    assert cp.actors["a1"].state == ActorState.ALIVE


def test_constructor_error_kills_the_actor_without_restart():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    s = actor_spec("a1", max_restarts=3)
    out = cp.handle(p.RegisterActor(actor_id="a1", spec=s), 0.0)
    request = sends(out, p.RequestWorkerLease)[0]
    cp.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id="node-1.w1", node_id="node-1"), 0.1)
    error = p.TaskReply(task_id=s.task_id, worker_id="node-1.w1", returns=(
        p.ReturnValue(object_id=s.return_ids[0], blob=p.Blob(data=b"", is_error=True)),))
    out = cp.handle(error, 0.2)
    assert sends_to(out, p.ReturnWorkerLease) == [("node-1", p.ReturnWorkerLease(
        lease_id=request.lease_id, worker_id="node-1.w1", worker_exiting=True))]
    [info] = states(out)
    assert info.state == "DEAD" and "constructor" in info.death_cause
    assert sends(out, p.RequestWorkerLease) == []
    cp.validate()


def test_kill_actor_returns_its_lease_with_exit_and_marks_it_dead():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    out = create(cp, actor_spec("a1", max_restarts=5), "node-1.w1")
    lease = sends(out, p.RequestWorkerLease)[0].lease_id
    out = cp.handle(p.KillActor(actor_id="a1", no_restart=True, reason="bye"), 1.0)
    assert sends_to(out, p.ReturnWorkerLease) == [
        ("node-1", p.ReturnWorkerLease(lease_id=lease, worker_id="node-1.w1", worker_exiting=True))]
    [info] = states(out)
    assert info.state == "DEAD" and info.death_cause == "bye"
    cp.validate()


def test_kill_actor_with_restart_allowed_restarts_it():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    create(cp, actor_spec("a1", max_restarts=1), "node-1.w1")
    out = cp.handle(p.KillActor(actor_id="a1", no_restart=False), 1.0)
    assert sends(out, p.ReturnWorkerLease)[0].worker_exiting is True
    assert [i.state for i in states(out)] == ["RESTARTING"]
    assert len(sends(out, p.RequestWorkerLease)) == 1
    cp.validate()


def test_grant_for_a_dead_actor_is_returned_with_exit():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    out = cp.handle(p.RegisterActor(actor_id="a1", spec=actor_spec("a1")), 0.0)
    request = sends(out, p.RequestWorkerLease)[0]
    cp.handle(p.KillActor(actor_id="a1"), 0.1)
    out = cp.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id="node-1.w1", node_id="node-1"), 0.2)
    assert sends(out, p.PushTask) == []
    assert sends_to(out, p.ReturnWorkerLease) == [("node-1", p.ReturnWorkerLease(
        lease_id=request.lease_id, worker_id="node-1.w1", worker_exiting=True))]


# ------------------------------------------------------------------ placement


def test_actor_no_node_can_host_waits_then_dies_unschedulable_on_quiescence():
    """QUI1: an actor no node can host waits unplaced, then dies ActorUnschedulableError at quiescence."""
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    out = cp.handle(p.RegisterActor(actor_id="a1", spec=actor_spec("a1", resources={"GPU": 1})), 0.0)
    assert sends(out, p.RequestWorkerLease) == []
    assert cp.unplaced == ["a1"]
    out = cp.handle(p.ClusterQuiescent(), 1.0)
    [info] = states(out)
    assert info.state == "DEAD" and info.death_cause.startswith("ActorUnschedulableError")


def test_unplaced_actor_is_leased_when_a_capable_node_registers():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    cp.handle(p.RegisterActor(actor_id="a1", spec=actor_spec("a1", resources={"GPU": 1})), 0.0)
    out = cp.handle(p.RegisterNode(node=node_info("node-2", {"CPU": 1, "GPU": 1})), 0.5)
    [(node, request)] = sends_to(out, p.RequestWorkerLease)
    assert node == "node-2" and request.grant_or_reject
    assert cp.unplaced == []


def test_rejected_actor_lease_is_retried_on_the_next_broadcast():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    out = cp.handle(p.RegisterActor(actor_id="a1", spec=actor_spec("a1")), 0.0)
    request = sends(out, p.RequestWorkerLease)[0]
    assert cp.handle(p.LeaseRejected(lease_id=request.lease_id, reason="busy"), 0.1) == []
    assert cp.unplaced == ["a1"]
    cp.handle(p.ResourceReport(node_id="node-1", available=Resources({"CPU": 3})), 0.2)
    out = cp.handle(p.TimerFired(key=("broadcast",)), 0.3)
    [again] = sends(out, p.RequestWorkerLease)
    assert again.lease_id != request.lease_id and again.spec.actor_id == "a1"


# ------------------------------------------------------------------ subscriptions


def test_subscribers_get_the_current_state_and_later_changes():
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    out = create(cp, actor_spec("a1", max_restarts=1), "node-1.w1")
    lease = sends(out, p.RequestWorkerLease)[0].lease_id
    out = cp.handle(p.SubscribeActor(actor_id="a1", subscriber="node-1.w9"), 0.5)
    assert [i.state for i in states(out, to="node-1.w9")] == ["ALIVE"]
    out = cp.handle(p.LeasedWorkerDied(lease_id=lease, worker_id="node-1.w1", reason="x"), 1.0)
    assert [i.state for i in states(out, to="node-1.w9")] == ["RESTARTING"]
    assert [i.state for i in states(out, to=DRIVER)] == ["RESTARTING"]
    # an unreachable subscriber is dropped
    change = sends(out, p.ActorStateChanged, to="node-1.w9")[0]
    cp.handle(p.PeerUnreachable(to="node-1.w9", original=change), 1.1)
    out = cp.handle(p.KillActor(actor_id="a1"), 1.2)
    assert states(out, to="node-1.w9") == [] and [i.state for i in states(out)] == ["DEAD"]


def test_subscription_before_registration_is_kept_until_the_actor_registers():
    """P-ACT-3: A handle can reach a borrower (and its subscription the control plane) before the owner
    registers."""
    cp = make_cp(node_info("node-1", {"CPU": 4}))
    assert cp.handle(p.SubscribeActor(actor_id="a1", subscriber="node-1.w9"), 0.0) == []
    out = cp.handle(p.RegisterActor(actor_id="a1", spec=actor_spec("a1")), 0.1)
    assert [i.state for i in states(out, to="node-1.w9")] == ["PENDING_CREATION"]
