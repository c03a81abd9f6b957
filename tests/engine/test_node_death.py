"""Node death (P-EVT-6 ``NodeDied``, F-8) in each engine: messages in, commands out.

The transport delivers ``NodeDied`` to the control plane, which marks the node dead, broadcasts
the view, kills what the node's processes owned, restarts its actors and tells every live node
manager; each node manager frees what the dead processes held and tells its own processes.
"""
from __future__ import annotations

import dataclasses

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.control_plane import ActorState
from rayref.core.core_worker import CoreWorker

from engine_helpers import (DRIVER, hold, lease_request, make_nm, node_info, of_type, register_started, sends,
                            sends_to, spec)
from test_control_plane import actor_spec, create, make_cp, states

DIED = p.NodeDied(node_id="node-2", reason="it stopped")
BIG = EngineConfig().inline_threshold + 1


ON_NODE_2 = p.SchedulingStrategy(kind="NODE_AFFINITY", node_id="node-2", soft=True)


def on_node_2(s: p.TaskSpec) -> p.TaskSpec:
    return dataclasses.replace(s, strategy=ON_NODE_2)


def three_node_cp():
    return make_cp(node_info("node-1", {"CPU": 2}), node_info("node-2", {"CPU": 2}), node_info("node-3", {"CPU": 2}))


# ------------------------------------------------------------------ control plane


def test_node_death_marks_the_node_dead_and_tells_the_live_nodes_view_first():
    """CP3: the dead node leaves scheduling; the view reaches every live node before the NodeDied."""
    cp = three_node_cp()
    out = cp.handle(DIED, 20.0)
    assert cp.nodes["node-2"].alive is False
    assert [(to, type(msg).__name__) for to, msg in sends_to(out, p.Message)] == [
        ("node-1", "ClusterView"), ("node-3", "ClusterView"), ("node-1", "NodeDied"), ("node-3", "NodeDied")]
    [view, _] = sends(out, p.ClusterView)
    assert [n.alive for n in view.nodes] == [True, False, True]
    assert cp.handle(DIED, 21.0) == []  # a second report changes nothing
    cp.validate()


def test_actor_on_a_dead_node_restarts_elsewhere_while_restarts_last():
    """RETRY1, CP3: the actor's node died: RESTARTING and a new lease on a live node."""
    cp = three_node_cp()
    create(cp, on_node_2(actor_spec(max_restarts=1)), "node-2.w1")
    assert cp.actors["a1"].node_id == "node-2"
    out = cp.handle(DIED, 20.0)
    assert [i.state for i in states(out)] == ["RESTARTING"]
    [(node, request)] = sends_to(out, p.RequestWorkerLease)
    assert node != "node-2" and request.grant_or_reject
    cp.validate()


def test_actor_without_restarts_dies_with_its_node_and_says_so():
    cp = three_node_cp()
    create(cp, on_node_2(actor_spec(max_restarts=0)), "node-2.w1")
    out = cp.handle(DIED, 20.0)
    [info] = states(out)
    assert info.state == "DEAD" and "node node-2 died" in info.death_cause and "it stopped" in info.death_cause
    assert sends(out, p.RequestWorkerLease) == []


def test_actor_lease_pending_at_a_dead_node_is_placed_again():
    """An actor whose lease request went to the dead node must not wait for an answer forever."""
    cp = three_node_cp()
    s = on_node_2(actor_spec())
    [(node, first)] = sends_to(cp.handle(p.RegisterActor(actor_id="a1", spec=s), 0.0), p.RequestWorkerLease)
    assert node == "node-2"
    record = cp.actors["a1"]
    out = cp.handle(DIED, 20.0)
    [(node, request)] = sends_to(out, p.RequestWorkerLease)
    assert node != "node-2" and request.lease_id != first.lease_id
    assert record.state == ActorState.PENDING_CREATION
    cp.validate()


def test_actors_owned_by_processes_of_a_dead_node_die_and_its_subscribers_are_dropped():
    """P-ACT-7 for every process of the node: non-detached actors they own are killed, wherever they run."""
    cp = three_node_cp()
    create(cp, actor_spec("a1", owner="node-2.w4"), "node-1.w1")
    cp.actors["a1"].subscribers["node-2.w5"] = None
    out = cp.handle(DIED, 20.0)
    assert cp.actors["a1"].state == ActorState.DEAD and "owner node-2.w4 died" in cp.actors["a1"].death_cause
    assert ("node-1", p.ReturnWorkerLease(lease_id=cp.actors["a1"].lease_id, worker_id="node-1.w1",
                                          worker_exiting=True)) in sends_to(out, p.ReturnWorkerLease)
    assert sends(out, p.ActorStateChanged, to="node-2.w5") == [] and "node-2.w5" not in cp.actors["a1"].subscribers


# ------------------------------------------------------------------ node manager


def viewed_nm(**total):
    nm, cmds = make_nm(**total)
    register_started(nm, cmds)
    nm.handle(p.ClusterView(nodes=(node_info("node-1", total), node_info("node-2", total),
                                   node_info("node-3", total))), 0.0)
    return nm


def test_node_manager_frees_what_the_dead_node_held_and_tells_its_processes():
    """NM1, NM3: leases of processes on the dead node are released; workers and the driver hear of it."""
    nm = viewed_nm(CPU=2)
    nm.handle(lease_request("l0", requester=DRIVER), 0.0)  # the driver becomes known here
    [(_, held)] = sends_to(nm.handle(lease_request("l1", requester="node-2.w3", spilled=1), 0.0), p.LeaseGranted)
    out = nm.handle(DIED, 20.0)
    assert of_type(out, p.KillWorker) == [p.KillWorker(worker_id=held.worker_id, reason="lease returned with exit")]
    assert "l1" not in nm.leases
    told = sorted(to for to, _ in sends_to(out, p.NodeDied))
    assert DRIVER in told and all(w in told for w in nm.workers)
    assert [n.alive for n in nm.view] == [True, False, True]
    nm.validate()


def test_pull_from_a_dead_node_moves_to_the_next_copy_or_reports_unavailable():
    nm = viewed_nm(CPU=1)
    out = nm.handle(p.PullObject(object_id="o1", requester=DRIVER, locations=("node-2", "node-3")), 0.0)
    assert [to for to, _ in sends_to(out, p.FetchObject)] == ["node-2"]
    out = nm.handle(DIED, 20.0)
    assert [to for to, _ in sends_to(out, p.FetchObject)] == ["node-3"]
    out = nm.handle(p.PullObject(object_id="o2", requester=DRIVER, locations=("node-2",)), 21.0)
    assert sends(out, p.FetchObject) == [] and [m.object_id for m in sends(out, p.ObjectUnavailable)] == ["o2"]


def test_new_request_with_hard_affinity_to_the_dead_node_is_rejected_final():
    nm = viewed_nm(CPU=1)
    nm.handle(DIED, 20.0)
    pinned = p.SchedulingStrategy(kind="NODE_AFFINITY", node_id="node-2")
    [rejected] = sends(nm.handle(lease_request("l1", strategy=pinned), 21.0), p.LeaseRejected)
    assert rejected.final and "node-2" in rejected.reason


# ------------------------------------------------------------------ core worker


def driver() -> CoreWorker:
    return CoreWorker(DRIVER, "node-1", EngineConfig(), is_driver=True)


def submit(cw: CoreWorker, s: p.TaskSpec) -> list:
    cw.submit_task(s)
    for object_id in s.return_ids:
        hold(cw, p.RefInfo(object_id=object_id, owner=DRIVER))
    return cw.drain()


def running_on_node_2(cw: CoreWorker, s: p.TaskSpec) -> p.RequestWorkerLease:
    [request] = sends(submit(cw, s), p.RequestWorkerLease)
    cw.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id="node-2.w1", node_id="node-2"), 0.0)
    return request


def test_task_running_on_a_dead_node_is_retried_then_fails_node_died():
    """RETRY1, NODE1: a lease on a dead node is lost; its task is retried, then fails NodeDiedError."""
    cw = driver()
    running_on_node_2(cw, spec("t1", max_retries=1))
    out = cw.handle(DIED, 20.0)
    [(to, retry)] = sends_to(out, p.RequestWorkerLease)
    assert to == "node-1" and retry.spec.attempt == 1 and cw.normal.leases == {}
    cw.handle(p.LeaseGranted(lease_id=retry.lease_id, worker_id="node-3.w1", node_id="node-3"), 20.1)
    cw.handle(dataclasses.replace(DIED, node_id="node-3"), 40.0)
    waiter = cw.begin_get([p.RefInfo(object_id="t1.r0", owner=DRIVER)], None)
    [result] = cw.results(waiter)
    assert waiter.done and result.system_error[0] == "NodeDiedError" and "node-3" in result.system_error[1]
    cw.validate()


def test_a_finished_tasks_lease_on_the_dead_node_is_not_reused():
    """A lease kept for the next task of its kind (or returned) never carries work to a dead node."""
    cw = driver()
    running_on_node_2(cw, spec("t1"))
    cw.handle(p.TaskReply(task_id="t1", worker_id="node-2.w1", returns=(
        p.ReturnValue(object_id="t1.r0", blob=p.Blob(data=b"1", nbytes=1)),)), 1.0)
    cw.handle(DIED, 1.001)
    assert cw.normal.leases == {}
    out = submit(cw, spec("t2"))
    assert sends(out, p.PushTask) == [] and [to for to, _ in sends_to(out, p.RequestWorkerLease)] == ["node-1"]


def test_lease_request_waiting_at_a_dead_node_is_made_again_locally():
    cw = driver()
    [first] = sends(submit(cw, spec("t1")), p.RequestWorkerLease)
    [(to, spilled)] = sends_to(cw.handle(p.LeaseSpilled(lease_id=first.lease_id, node_id="node-2"), 0.0),
                               p.RequestWorkerLease)
    assert to == "node-2"
    [(to, again)] = sends_to(cw.handle(DIED, 20.0), p.RequestWorkerLease)
    assert to == "node-1" and again.spilled == 0 and again.spec.attempt == 0
    # a grant the dead node sent before it died comes back to nobody: returned
    out = cw.handle(p.LeaseGranted(lease_id=spilled.lease_id, worker_id="node-2.w1", node_id="node-2"), 20.1)
    assert sends(out, p.PushTask) == [] and len(sends(out, p.ReturnWorkerLease)) == 1


def test_objects_only_on_the_dead_node_are_lost_and_copies_held_here_survive():
    """An owned object stored only there is lost; one whose value this process holds is served inline."""
    cw = driver()
    for task_id in ("t1", "t2"):
        running_on_node_2(cw, spec(task_id, name=task_id))  # two functions: two leases
        cw.handle(p.TaskReply(task_id=task_id, worker_id="node-2.w1", returns=(
            p.ReturnValue(object_id=f"{task_id}.r0", node_id="node-2", nbytes=BIG),)), 1.0)
    cw.handle(p.ObjectLocal(object_id="t2.r0", blob=p.Blob(data=b"v", nbytes=BIG)), 2.0)  # t2.r0 was fetched
    cw.handle(DIED, 20.0)
    lost, kept = cw.refs.get("t1.r0"), cw.refs.get("t2.r0")
    assert lost.blob.system_error[0] == "ObjectLostError" and "node-2" in lost.blob.system_error[1]
    assert kept.blob.data == b"v" and kept.locations == []
    out = cw.handle(p.GetObjectStatus(object_id="t2.r0", requester="node-3.w1"), 21.0)
    [status] = sends(out, p.ObjectStatus)
    assert status.blob is not None and status.blob.data == b"v"  # no location left: sent inline


def test_borrowed_object_whose_owner_was_on_the_dead_node_is_owner_died():
    cw = driver()
    info = p.RefInfo(object_id="node-2.w1.p1", owner="node-2.w1")
    hold(cw, info)
    waiter = cw.begin_get([info], None)
    assert sends(cw.drain(), p.GetObjectStatus, to="node-2.w1")
    cw.handle(DIED, 20.0)
    [result] = cw.results(waiter)
    assert waiter.done and result.system_error[0] == "OwnerDiedError"


def test_borrowers_on_the_dead_node_no_longer_keep_an_object_alive():
    """RC1, LIFE1: a borrower that died with its node is forgotten; with no other hold the object is freed."""
    cw = driver()
    info = cw.put(p.Blob(data=b"v", nbytes=1)).value
    cw.refs.add_borrower(info.object_id, "node-2.w1")
    cw.refs.add_borrower(info.object_id, "node-3.w1")
    cw.handle(DIED, 20.0)
    assert list(cw.refs.get(info.object_id).borrowers) == ["node-3.w1"]
    cw.handle(p.RemoveBorrower(object_id=info.object_id, borrower="node-3.w1"), 21.0)
    assert cw.refs.get(info.object_id) is None
