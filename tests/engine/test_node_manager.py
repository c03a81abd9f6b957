"""NodeManager as a pure state machine: messages in, commands out.

Invariants (rayref/core/node_manager.py): NM1 available = total - allocations of granted and
awaiting leases (blocked leases' CPUs lent); NM2 no grant beyond what was available; NM3 leased
workers and granted leases match one to one. Every test calls ``validate()`` as it goes.
"""
from __future__ import annotations

from rayref.core import protocol as p
from rayref.core.node_manager import LeaseState, WorkerState
from rayref.core.resources import Resources

from engine_helpers import (DRIVER, lease_request, make_nm, node_info, of_type, register_started, sends,
                            sends_to)


def ready_nm(**total):
    nm, cmds = make_nm(**total)
    register_started(nm, cmds)
    nm.validate()
    return nm


def granted(commands) -> list[p.LeaseGranted]:
    return sends(commands, p.LeaseGranted)


# ------------------------------------------------------------------ start-up


def test_start_registers_node_and_prestarts_one_worker_per_cpu():
    """start(): RegisterNode to the control plane with the node's totals, one StartWorker per CPU."""
    nm, cmds = make_nm(CPU=3)
    (register,) = sends(cmds, p.RegisterNode, to=p.CONTROL_PLANE)
    assert register.node.node_id == "node-1"
    assert register.node.total == Resources({"CPU": 3})
    assert register.node.available == Resources({"CPU": 3})
    starts = of_type(cmds, p.StartWorker)
    assert [s.worker_id for s in starts] == ["node-1.w1", "node-1.w2", "node-1.w3"]
    assert all(s.node_id == "node-1" for s in starts)
    register_started(nm, cmds)
    assert all(w.state == WorkerState.IDLE for w in nm.workers.values())
    nm.validate()


def test_no_prestart_when_disabled():
    nm, cmds = make_nm(prestart=False, CPU=3)
    assert of_type(cmds, p.StartWorker) == []
    assert len(sends(cmds, p.RegisterNode)) == 1


# ------------------------------------------------------------------ leases


def test_lease_that_fits_is_granted_to_an_idle_worker():
    """NM1/NM3: a fitting request is granted at once to an idle registered worker and charged."""
    nm = ready_nm(CPU=2)
    out = nm.handle(lease_request("l1", resources={"CPU": 1}), 1.0)
    [(to, grant)] = sends_to(out, p.LeaseGranted)
    assert to == DRIVER
    assert grant.lease_id == "l1" and grant.worker_id == "node-1.w1" and grant.node_id == "node-1"
    assert grant.gpu_ids == ()
    assert nm.available.get("CPU") == 1
    assert nm.workers["node-1.w1"].state == WorkerState.LEASED
    assert nm.leases["l1"].state == LeaseState.GRANTED
    # the change of resources arms one report timer
    assert [t.key for t in of_type(out, p.StartTimer)] == [("report",)]
    nm.validate()


def test_request_that_does_not_fit_now_queues_then_is_granted_on_return():
    """NM1/NM3: with the node full a feasible request queues (no reply); the return grants it."""
    nm = ready_nm(CPU=1)
    [g1] = granted(nm.handle(lease_request("l1"), 0.0))
    out = nm.handle(lease_request("l2"), 0.1)
    assert sends(out, p.LeaseGranted) == sends(out, p.LeaseSpilled) == sends(out, p.LeaseRejected) == []
    assert sends(out, p.LeaseInfeasible) == []
    assert nm.leases["l2"].state == LeaseState.QUEUED
    nm.validate()
    out = nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g1.worker_id), 0.2)
    [g2] = granted(out)
    assert g2.lease_id == "l2" and g2.worker_id == g1.worker_id
    assert "l1" not in nm.leases
    assert nm.available.get("CPU") == 0
    nm.validate()
    nm.handle(p.ReturnWorkerLease(lease_id="l2", worker_id=g2.worker_id), 0.3)
    assert nm.available == nm.total
    assert list(nm.idle) == [g1.worker_id]
    nm.validate()


def test_grant_waits_for_a_worker_to_register():
    """A lease allocated with no idle worker waits (AWAITING_WORKER, resources held: NM1)."""
    nm, cmds = make_nm(prestart=False, CPU=2)
    out = nm.handle(lease_request("l1"), 0.0)
    assert granted(out) == []
    [start] = of_type(out, p.StartWorker)
    assert nm.leases["l1"].state == LeaseState.AWAITING_WORKER
    assert nm.available.get("CPU") == 1
    nm.validate()
    out = nm.handle(p.WorkerRegistered(worker_id=start.worker_id, node_id="node-1"), 0.05)
    [g] = granted(out)
    assert g.lease_id == "l1" and g.worker_id == start.worker_id
    nm.validate()


def test_lease_with_exit_returns_kills_the_worker():
    nm = ready_nm(CPU=1)
    [g] = granted(nm.handle(lease_request("l1"), 0.0))
    out = nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g.worker_id, worker_exiting=True), 0.1)
    assert [k.worker_id for k in of_type(out, p.KillWorker)] == [g.worker_id]
    assert g.worker_id not in nm.workers
    assert nm.available == nm.total
    nm.validate()


def test_request_infeasible_everywhere_warns_then_is_rejected_final_on_quiescence():
    """QUI1: No node can ever hold 1 GPU: LeaseInfeasible once (stays queued), LeaseRejected(final) when
    quiescent."""
    nm = ready_nm(CPU=2)
    out = nm.handle(lease_request("l1", resources={"GPU": 1}), 0.0)
    [(to, warn)] = sends_to(out, p.LeaseInfeasible)
    assert to == DRIVER and warn.lease_id == "l1"
    assert sends(out, p.LeaseRejected) == []
    assert nm.leases["l1"].state == LeaseState.INFEASIBLE
    # a new view that changes nothing re-places it without a second warning
    out = nm.handle(p.ClusterView(nodes=(nm.info(),)), 0.1)
    assert sends(out, p.LeaseInfeasible) == [] and sends(out, p.LeaseRejected) == []
    nm.validate()
    out = nm.handle(p.ClusterQuiescent(), 0.2)
    [(to, reject)] = sends_to(out, p.LeaseRejected)
    assert to == DRIVER and reject.lease_id == "l1" and reject.final is True
    assert "GPU" in reject.reason
    assert nm.leases == {}
    assert nm.available == nm.total
    nm.validate()


def test_quiescence_does_not_reject_feasible_queued_leases():
    nm = ready_nm(CPU=1)
    nm.handle(lease_request("l1"), 0.0)
    nm.handle(lease_request("l2"), 0.0)
    out = nm.handle(p.ClusterQuiescent(), 0.1)
    assert sends(out, p.LeaseRejected) == []
    assert nm.leases["l2"].state == LeaseState.QUEUED


def test_infeasible_request_spills_when_a_capable_node_joins():
    """An INFEASIBLE lease is re-placed on each view: a new GPU node gets it (LeaseSpilled)."""
    nm = ready_nm(CPU=2)
    nm.handle(lease_request("l1", resources={"GPU": 1}), 0.0)
    view = p.ClusterView(nodes=(node_info("node-1", {"CPU": 2}), node_info("node-2", {"CPU": 2, "GPU": 1})))
    out = nm.handle(view, 0.5)
    [(to, spill)] = sends_to(out, p.LeaseSpilled)
    assert to == DRIVER and spill.lease_id == "l1" and spill.node_id == "node-2"
    assert nm.leases == {}
    nm.validate()


def test_spillback_to_a_less_loaded_node_from_the_cluster_view():
    """Hybrid policy: local at 50% use is not 'empty'; the idle node-2 from the view wins."""
    nm = ready_nm(CPU=2)
    nm.handle(p.ClusterView(nodes=(node_info("node-1", {"CPU": 2}), node_info("node-2", {"CPU": 4}))), 0.0)
    assert granted(nm.handle(lease_request("l1"), 0.0))
    assert nm.available.get("CPU") == 1
    out = nm.handle(lease_request("l2"), 0.1)
    [(to, spill)] = sends_to(out, p.LeaseSpilled)
    assert to == DRIVER and spill == p.LeaseSpilled(lease_id="l2", node_id="node-2")
    assert "l2" not in nm.leases
    assert nm.available.get("CPU") == 1
    nm.validate()


def test_local_node_below_threshold_keeps_the_lease():
    """Hybrid: the local node is preferred while its use is below 0.5, even if others are emptier."""
    nm = ready_nm(CPU=4)
    nm.handle(p.ClusterView(nodes=(node_info("node-1", {"CPU": 4}), node_info("node-2", {"CPU": 64}))), 0.0)
    assert granted(nm.handle(lease_request("l1"), 0.0))  # 25% used afterwards
    out = nm.handle(lease_request("l2"), 0.0)
    assert [g.lease_id for g in granted(out)] == ["l2"]
    assert sends(out, p.LeaseSpilled) == []


def test_spilled_request_is_granted_here_at_once_or_rejected_never_spilled_again():
    """A request with ``spilled`` set is granted locally if it fits now, even though the view
    says elsewhere is emptier; if it does not fit now it is rejected (not final), never queued."""
    nm = ready_nm(CPU=2)
    nm.handle(p.ClusterView(nodes=(node_info("node-1", {"CPU": 2}), node_info("node-2", {"CPU": 8}))), 0.0)
    assert granted(nm.handle(lease_request("l1"), 0.0))
    out = nm.handle(lease_request("l2", spilled=1), 0.0)
    assert [g.lease_id for g in granted(out)] == ["l2"]
    assert sends(out, p.LeaseSpilled) == []
    out = nm.handle(lease_request("l3", spilled=1), 0.0)
    assert sends(out, p.LeaseSpilled) == [] and granted(out) == []
    [reject] = sends(out, p.LeaseRejected)
    assert reject.lease_id == "l3" and reject.final is False
    assert "l3" not in nm.leases and "l3" not in nm.queue
    nm.validate()


def test_grant_or_reject_request_from_the_control_plane_is_never_queued():
    nm = ready_nm(CPU=1)
    assert granted(nm.handle(lease_request("l1"), 0.0))
    out = nm.handle(lease_request("cp.l1", requester=p.CONTROL_PLANE, grant_or_reject=True), 0.0)
    assert sends_to(out, p.LeaseRejected)[0][0] == p.CONTROL_PLANE
    assert sends(out, p.LeaseRejected)[0].final is False
    assert "cp.l1" not in nm.leases
    nm.validate()


def test_spilled_resources_are_subtracted_from_the_view_until_the_next_broadcast():
    """A burst does not all land on one node: after spilling 1 CPU to node-2 (1 CPU in the
    view), the next request queues locally; the next view resets the guess and moves it."""
    nm = ready_nm(CPU=1)
    nm.handle(p.ClusterView(nodes=(node_info("node-1", {"CPU": 1}), node_info("node-2", {"CPU": 1}))), 0.0)
    assert granted(nm.handle(lease_request("l1"), 0.0))
    assert sends(nm.handle(lease_request("l2"), 0.0), p.LeaseSpilled) == [
        p.LeaseSpilled(lease_id="l2", node_id="node-2")]
    out = nm.handle(lease_request("l3"), 0.0)
    assert sends(out, p.LeaseSpilled) == []
    assert nm.leases["l3"].state == LeaseState.QUEUED
    out = nm.handle(p.ClusterView(nodes=(node_info("node-1", {"CPU": 1}, {"CPU": 0}),
                                         node_info("node-2", {"CPU": 1}))), 0.1)
    assert sends(out, p.LeaseSpilled) == [p.LeaseSpilled(lease_id="l3", node_id="node-2")]
    nm.validate()


def test_spilled_request_that_can_never_fit_here_is_rejected_not_final():
    nm = ready_nm(CPU=2)
    out = nm.handle(lease_request("l1", resources={"CPU": 4}, spilled=1), 0.0)
    [reject] = sends(out, p.LeaseRejected)
    assert reject.lease_id == "l1" and reject.final is False
    assert nm.leases == {}


def test_queued_lease_moves_when_a_view_shows_room_elsewhere():
    """A QUEUED (not spilled) lease is re-placed on a new view: it spills to the node with room."""
    nm = ready_nm(CPU=1)
    assert granted(nm.handle(lease_request("l1"), 0.0))
    nm.handle(lease_request("l2"), 0.0)
    assert nm.leases["l2"].state == LeaseState.QUEUED
    out = nm.handle(p.ClusterView(nodes=(node_info("node-1", {"CPU": 1}, {"CPU": 0}),
                                         node_info("node-2", {"CPU": 2}))), 0.3)
    assert sends(out, p.LeaseSpilled) == [p.LeaseSpilled(lease_id="l2", node_id="node-2")]
    assert "l2" not in nm.leases and "l2" not in nm.queue
    nm.validate()


def test_cancel_lease_drops_a_queued_request():
    nm = ready_nm(CPU=1)
    [g1] = granted(nm.handle(lease_request("l1"), 0.0))
    nm.handle(lease_request("l2"), 0.0)
    assert nm.handle(p.CancelLease(lease_id="l2"), 0.1) == []
    assert "l2" not in nm.leases
    out = nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g1.worker_id), 0.2)
    assert granted(out) == []
    assert nm.available == nm.total
    nm.validate()


def test_cancel_of_an_awaiting_worker_lease_releases_its_resources():
    """NM1: an AWAITING_WORKER lease holds resources; cancelling it gives them back."""
    nm, _ = make_nm(prestart=False, CPU=2)
    nm.handle(lease_request("l1"), 0.0)
    assert nm.available.get("CPU") == 1
    nm.handle(p.CancelLease(lease_id="l1"), 0.0)
    assert nm.available == nm.total and nm.leases == {}
    nm.validate()


def test_cancel_of_a_granted_lease_is_ignored():
    nm = ready_nm(CPU=1)
    nm.handle(lease_request("l1"), 0.0)
    nm.handle(p.CancelLease(lease_id="l1"), 0.0)
    assert nm.leases["l1"].state == LeaseState.GRANTED
    nm.validate()


# ------------------------------------------------------------------ blocked workers


def test_worker_blocked_lends_its_cpus_back_and_unblocked_takes_them_again():
    """NM1: a blocked lease's CPUs are lent to the node (a queued lease runs); unblocking
    takes them back even if that overcommits the node for a while."""
    nm = ready_nm(CPU=1)
    [g1] = granted(nm.handle(lease_request("l1"), 0.0))
    nm.handle(lease_request("l2"), 0.0)
    assert nm.leases["l2"].state == LeaseState.QUEUED
    out = nm.handle(p.WorkerBlocked(worker_id=g1.worker_id), 0.1)
    # the lent CPU goes to l2, which needs a new worker (w1 is still leased, only blocked)
    [start] = of_type(out, p.StartWorker)
    assert nm.leases["l2"].state == LeaseState.AWAITING_WORKER
    assert nm.available.get("CPU") == 0
    nm.validate()
    [g2] = granted(nm.handle(p.WorkerRegistered(worker_id=start.worker_id, node_id="node-1"), 0.15))
    assert g2.lease_id == "l2" and g2.worker_id == start.worker_id
    nm.validate()
    nm.handle(p.WorkerUnblocked(worker_id=g1.worker_id), 0.2)
    assert nm.available.get("CPU") == -1  # overcommitted until someone returns
    nm.validate()
    nm.handle(p.ReturnWorkerLease(lease_id="l2", worker_id=g2.worker_id), 0.3)
    assert nm.available.get("CPU") == 0
    nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g1.worker_id), 0.4)
    assert nm.available == nm.total
    nm.validate()


def _two_idle_workers_on_one_cpu():
    """A 1-CPU node whose blocked lease made it start a second worker; both idle again at 0.4."""
    nm = ready_nm(CPU=1)
    [g1] = granted(nm.handle(lease_request("l1"), 0.0))
    nm.handle(lease_request("l2"), 0.0)
    [start] = of_type(nm.handle(p.WorkerBlocked(worker_id=g1.worker_id), 0.1), p.StartWorker)
    [g2] = granted(nm.handle(p.WorkerRegistered(worker_id=start.worker_id, node_id="node-1"), 0.15))
    nm.handle(p.WorkerUnblocked(worker_id=g1.worker_id), 0.2)
    nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g1.worker_id), 0.3)
    out = nm.handle(p.ReturnWorkerLease(lease_id="l2", worker_id=g2.worker_id), 0.4)
    assert list(nm.idle) == [g1.worker_id, g2.worker_id]
    nm.validate()
    return nm, g1.worker_id, g2.worker_id, out


def test_an_idle_worker_beyond_one_per_cpu_is_asked_to_exit_and_killed_when_it_agrees():
    """NM5, P-LEASE-12: more idle workers than CPUs arms the reaping timer; when it fires the oldest
    idle worker past ``idle_worker_timeout`` is asked to exit; it agrees and is killed."""
    nm, oldest, newest, out = _two_idle_workers_on_one_cpu()
    [timer] = [t for t in of_type(out, p.StartTimer) if t.key == ("reap",)]
    assert timer.delay == nm.config.idle_worker_timeout
    out = nm.handle(p.TimerFired(key=("reap",)), 0.3 + timer.delay)
    assert sends_to(out, p.ExitIfIdle) == [(oldest, p.ExitIfIdle(worker_id=oldest))]
    assert nm.workers[oldest].state == WorkerState.EXITING and list(nm.idle) == [newest]
    nm.validate()
    out = nm.handle(lease_request("l3"), 1.5)  # a lease meanwhile does not get the exiting worker
    [g3] = granted(out)
    assert g3.worker_id == newest
    out = nm.handle(p.ExitIfIdleReply(worker_id=oldest, exiting=True), 1.6)
    assert [(k.worker_id, k.reason) for k in of_type(out, p.KillWorker)] == [(oldest, "idle beyond the pool's size")]
    assert oldest not in nm.workers
    nm.handle(p.WorkerExited(worker_id=oldest, node_id="node-1", reason="killed by signal 9"), 1.7)
    nm.validate()


def test_an_idle_worker_that_holds_something_stays_and_is_idle_again():
    """NM5: a worker that refuses to exit (it holds objects) is idle again, asked again only
    after another timeout; one that dies while asked is simply forgotten."""
    nm, oldest, newest, out = _two_idle_workers_on_one_cpu()
    nm.handle(p.TimerFired(key=("reap",)), 1.3)
    out = nm.handle(p.ExitIfIdleReply(worker_id=oldest, exiting=False), 1.35)
    assert of_type(out, p.KillWorker) == [] and list(nm.idle) == [newest, oldest]
    assert [t.key for t in of_type(out, p.StartTimer)] == [("reap",)]
    nm.validate()
    out = nm.handle(p.TimerFired(key=("reap",)), 2.35)
    assert sends_to(out, p.ExitIfIdle) == [(newest, p.ExitIfIdle(worker_id=newest))]
    nm.handle(p.WorkerExited(worker_id=newest, node_id="node-1", reason="exited with code 1"), 2.4)
    assert list(nm.idle) == [oldest] and newest not in nm.workers
    assert sends(nm.handle(p.ExitIfIdleReply(worker_id=newest, exiting=True), 2.5)) == []
    nm.validate()


def test_one_idle_worker_per_cpu_is_never_asked_to_exit():
    """P-LEASE-12: the prestarted pool (one worker per CPU) stays, however long it is idle."""
    nm = ready_nm(CPU=2)
    [g] = granted(nm.handle(lease_request("l1"), 0.0))
    out = nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g.worker_id), 0.1)
    assert [t for t in of_type(out, p.StartTimer) if t.key == ("reap",)] == []
    assert sends(nm.handle(p.TimerFired(key=("reap",)), 100.0), p.ExitIfIdle) == []
    assert len(nm.idle) == 2


def test_blocked_lease_returned_while_blocked_does_not_double_count_cpus():
    """NM1: returning a lease whose CPUs are lent gives back only what it still held."""
    nm = ready_nm(CPU=2, GPU=1)
    [g] = granted(nm.handle(lease_request("l1", resources={"CPU": 2, "GPU": 1}), 0.0))
    nm.handle(p.WorkerBlocked(worker_id=g.worker_id), 0.1)
    assert nm.available == Resources({"CPU": 2})
    nm.handle(p.WorkerBlocked(worker_id=g.worker_id), 0.1)  # idempotent
    assert nm.available == Resources({"CPU": 2})
    nm.validate()
    nm.handle(p.ReturnWorkerLease(lease_id="l1", worker_id=g.worker_id), 0.2)
    assert nm.available == nm.total
    nm.validate()


# ------------------------------------------------------------------ GPUs


def test_fractional_gpus_pack_onto_one_gpu_index():
    """NM2, NM4: GpuInstances: fractional requests take the first GPU with room (first fit by index)."""
    nm = ready_nm(CPU=8, GPU=2)
    ids = [granted(nm.handle(lease_request(f"l{i}", resources={"GPU": 0.5}), 0.0))[0].gpu_ids for i in range(4)]
    assert ids == [(0,), (0,), (1,), (1,)]
    assert nm.available.get("GPU") == 0
    nm.validate()
    out = nm.handle(lease_request("l9", resources={"GPU": 0.5}), 0.0)
    assert granted(out) == []
    assert nm.leases["l9"].state == LeaseState.QUEUED


def test_whole_gpus_take_distinct_indices():
    """NM2, NM4: whole-GPU leases take distinct GPU indices."""
    nm = ready_nm(CPU=8, GPU=4)
    a = granted(nm.handle(lease_request("a", resources={"GPU": 1}), 0.0))[0].gpu_ids
    b = granted(nm.handle(lease_request("b", resources={"GPU": 2}), 0.0))[0].gpu_ids
    c = granted(nm.handle(lease_request("c", resources={"GPU": 1}), 0.0))[0].gpu_ids
    assert a == (0,) and b == (1, 2) and c == (3,)
    assert len(set(a) | set(b) | set(c)) == 4
    nm.validate()


def test_whole_gpu_skips_a_partly_used_gpu_and_waits_for_a_free_one():
    """NM2, NM4: A whole-GPU lease never shares an index with a fractional one."""
    nm = ready_nm(CPU=8, GPU=2)
    [half] = granted(nm.handle(lease_request("half", resources={"GPU": 0.5}), 0.0))
    [one] = granted(nm.handle(lease_request("one", resources={"GPU": 1}), 0.0))
    assert half.gpu_ids == (0,) and one.gpu_ids == (1,)
    out = nm.handle(lease_request("two", resources={"GPU": 1}), 0.0)
    assert granted(out) == []  # 0.5 GPU is free in total but no whole GPU is
    out = nm.handle(p.ReturnWorkerLease(lease_id="half", worker_id=half.worker_id), 0.1)
    [two] = granted(out)
    assert two.lease_id == "two" and two.gpu_ids == (0,)
    nm.validate()


def test_fractional_request_never_straddles_two_gpus():
    """NM2, NM4: 0.3 GPU left on each of two GPUs is 0.6 in total, yet a 0.5 request cannot be placed."""
    nm = ready_nm(CPU=8, GPU=2)
    [a] = granted(nm.handle(lease_request("a", resources={"GPU": 0.7}), 0.0))
    [b] = granted(nm.handle(lease_request("b", resources={"GPU": 0.7}), 0.0))
    assert (a.gpu_ids, b.gpu_ids) == ((0,), (1,))
    out = nm.handle(lease_request("c", resources={"GPU": 0.5}), 0.0)
    assert granted(out) == []
    assert nm.available.get("GPU") == 0.6
    nm.validate()
    [c] = granted(nm.handle(p.ReturnWorkerLease(lease_id="b", worker_id=b.worker_id), 0.1))
    assert c.lease_id == "c" and c.gpu_ids == (1,)
    nm.validate()


# ------------------------------------------------------------------ workers dying


def test_worker_exit_of_a_leased_worker_sends_leased_worker_died():
    """NM1/NM3: the lease holder hears LeasedWorkerDied; the resources come back; the queue moves."""
    nm = ready_nm(CPU=1)
    [g] = granted(nm.handle(lease_request("l1"), 0.0))
    nm.handle(lease_request("l2", requester="node-1.w7"), 0.0)
    out = nm.handle(p.WorkerExited(worker_id=g.worker_id, node_id="node-1", reason="segfault"), 1.0)
    [(to, died)] = sends_to(out, p.LeasedWorkerDied)
    assert to == DRIVER
    assert died == p.LeasedWorkerDied(lease_id="l1", worker_id=g.worker_id, reason="segfault")
    assert "l1" not in nm.leases and g.worker_id not in nm.workers
    # l2 got the CPU and needs a fresh worker
    assert of_type(out, p.StartWorker)
    assert nm.leases["l2"].state == LeaseState.AWAITING_WORKER
    nm.validate()


def test_worker_exit_of_an_idle_worker_is_only_reported_to_the_control_plane():
    nm = ready_nm(CPU=2)
    out = nm.handle(p.WorkerExited(worker_id="node-1.w2", node_id="node-1", reason="idle"), 0.0)
    assert sends_to(out, p.Message) == [(p.CONTROL_PLANE, p.ProcessDied(address="node-1.w2"))]
    assert list(nm.idle) == ["node-1.w1"]
    nm.validate()


def test_starting_worker_that_dies_is_replaced_when_a_lease_waits():
    nm, _ = make_nm(prestart=False, CPU=1)
    [start] = of_type(nm.handle(lease_request("l1"), 0.0), p.StartWorker)
    out = nm.handle(p.WorkerExited(worker_id=start.worker_id, node_id="node-1", reason="crash"), 0.01)
    [again] = of_type(out, p.StartWorker)
    assert again.worker_id != start.worker_id
    [g] = granted(nm.handle(p.WorkerRegistered(worker_id=again.worker_id, node_id="node-1"), 0.1))
    assert g.lease_id == "l1"
    nm.validate()


def test_grant_to_a_dead_requester_is_taken_back():
    """PeerUnreachable(LeaseGranted): the lease is returned and its worker is idle again."""
    nm = ready_nm(CPU=1)
    [g] = granted(nm.handle(lease_request("l1"), 0.0))
    nm.handle(p.PeerUnreachable(to=DRIVER, original=g), 0.1)
    assert nm.leases == {} and nm.available == nm.total
    assert list(nm.idle) == [g.worker_id]
    nm.validate()


# ------------------------------------------------------------------ reports


def test_resource_change_reports_once_per_period():
    nm = ready_nm(CPU=2)
    out = nm.handle(lease_request("l1"), 0.0)
    assert of_type(out, p.StartTimer) == [p.StartTimer(key=("report",), delay=nm.config.report_period)]
    out = nm.handle(lease_request("l2"), 0.01)
    assert of_type(out, p.StartTimer) == []  # already armed
    out = nm.handle(p.TimerFired(key=("report",)), 0.1)
    assert sends_to(out, p.ResourceReport) == [
        (p.CONTROL_PLANE, p.ResourceReport(node_id="node-1", available=Resources({"CPU": 0})))]


# ------------------------------------------------------------------ objects


def blob(n: int, tag: bytes = b"x") -> p.Blob:
    return p.Blob(data=tag, nbytes=n)


def test_put_then_pull_serves_from_the_local_store_and_free_removes():
    """OS1: the store accounts the bytes of a put; FreeObjects removes them."""
    nm = ready_nm(CPU=1)
    nm.handle(p.PutObject(object_id="o1", owner=DRIVER, blob=blob(300)), 0.0)
    assert nm.store.used == 300
    out = nm.handle(p.PullObject(object_id="o1", requester="node-1.w1", locations=("node-1",)), 0.0)
    assert sends_to(out, p.ObjectLocal) == [("node-1.w1", p.ObjectLocal(object_id="o1", blob=blob(300)))]
    nm.handle(p.FreeObjects(object_ids=("o1",)), 0.1)
    assert "o1" not in nm.store and nm.store.used == 0
    nm.validate()


def test_pull_of_a_remote_object_fetches_it_and_caches_a_secondary_copy():
    nm = ready_nm(CPU=1)
    out = nm.handle(p.PullObject(object_id="o1", requester="node-1.w1", locations=("node-2",)), 0.0)
    assert sends_to(out, p.FetchObject) == [("node-2", p.FetchObject(object_id="o1", requester_node="node-1"))]
    # a second requester joins the same pull without a second fetch
    out = nm.handle(p.PullObject(object_id="o1", requester="node-1.driver", locations=("node-2",)), 0.0)
    assert sends(out) == []
    out = nm.handle(p.ObjectTransfer(object_id="o1", blob=blob(50), from_node="node-2"), 0.1)
    assert sorted(to for to, _ in sends_to(out, p.ObjectLocal)) == ["node-1.driver", "node-1.w1"]
    assert nm.store.objects["o1"].pinned is False
    nm.validate()


def test_pull_falls_back_to_the_next_location_then_reports_unavailable():
    nm = ready_nm(CPU=1)
    out = nm.handle(p.PullObject(object_id="o1", requester="node-1.w1", locations=("node-2", "node-3")), 0.0)
    assert [to for to, _ in sends_to(out, p.FetchObject)] == ["node-2"]
    out = nm.handle(p.ObjectTransfer(object_id="o1", blob=None, from_node="node-2"), 0.1)
    assert [to for to, _ in sends_to(out, p.FetchObject)] == ["node-3"]
    out = nm.handle(p.ObjectTransfer(object_id="o1", blob=None, from_node="node-3"), 0.2)
    [(to, unavailable)] = sends_to(out, p.ObjectUnavailable)
    assert to == "node-1.w1" and unavailable.object_id == "o1"


def test_fetch_before_put_is_answered_when_the_put_arrives():
    nm = ready_nm(CPU=1)
    assert sends(nm.handle(p.FetchObject(object_id="o1", requester_node="node-2"), 0.0)) == []
    out = nm.handle(p.PutObject(object_id="o1", owner=DRIVER, blob=blob(10)), 0.1)
    assert sends_to(out, p.ObjectTransfer) == [
        ("node-2", p.ObjectTransfer(object_id="o1", blob=blob(10), from_node="node-1"))]


def test_a_put_beyond_capacity_spills_the_oldest_pinned_object():
    """OS2, P-OBJ-9: the store spills; the node manager tells its transport, which answers with
    the blob that reads the object from where it went."""
    nm = ready_nm(CPU=1, store=100)
    assert of_type(nm.handle(p.PutObject(object_id="o1", owner=DRIVER, blob=blob(60)), 0.0), p.SpillObject) == []
    out = nm.handle(p.PutObject(object_id="o2", owner=DRIVER, blob=blob(60), reply_to=DRIVER), 0.1)
    assert of_type(out, p.SpillObject) == [p.SpillObject(object_id="o1", blob=blob(60))]
    assert sends_to(out, p.ObjectStored) == [(DRIVER, p.ObjectStored(object_id="o2"))]
    nm.handle(p.ObjectSpilled(object_id="o1", blob=blob(60, b"on disk")), 0.2)
    out = nm.handle(p.PullObject(object_id="o1", requester="node-1.w1", locations=("node-1",)), 0.3)
    assert sends_to(out, p.ObjectLocal) == [("node-1.w1", p.ObjectLocal(object_id="o1", blob=blob(60, b"on disk")))]
    assert nm.store.used == 60 and nm.store.spilled_bytes == 60
    nm.validate()


def test_freeing_a_primary_frees_the_copies_it_sent_to_other_nodes():
    """P-OBJ-8: the primary's node remembers where copies went (fetches, and fetches parked for
    the put) and frees them with it; a node freeing a copy forwards nothing."""
    nm = ready_nm(CPU=1)
    nm.handle(p.FetchObject(object_id="o1", requester_node="node-3"), 0.0)
    nm.handle(p.PutObject(object_id="o1", owner=DRIVER, blob=blob(10)), 0.1)
    nm.handle(p.FetchObject(object_id="o1", requester_node="node-2"), 0.2)
    out = nm.handle(p.FreeObjects(object_ids=("o1",)), 0.3)
    assert sends_to(out, p.FreeObjects) == [("node-3", p.FreeObjects(object_ids=("o1",))),
                                           ("node-2", p.FreeObjects(object_ids=("o1",)))]
    copy = ready_nm(CPU=1)
    copy.handle(p.PullObject(object_id="o2", requester="node-1.w1", locations=("node-2",)), 0.0)
    copy.handle(p.ObjectTransfer(object_id="o2", blob=blob(10), from_node="node-2"), 0.1)
    assert "o2" in copy.store
    assert sends(copy.handle(p.FreeObjects(object_ids=("o2",)), 0.2)) == [] and "o2" not in copy.store
    nm.validate()
    copy.validate()


def test_free_before_put_drops_the_late_put():
    nm = ready_nm(CPU=1)
    nm.handle(p.FreeObjects(object_ids=("o1",)), 0.0)
    nm.handle(p.PutObject(object_id="o1", owner=DRIVER, blob=blob(10)), 0.1)
    assert "o1" not in nm.store and nm.store.used == 0
    nm.validate()


def test_leases_held_by_a_dead_process_are_killed_and_released():
    """NM1, NM3: a dead requester's granted lease is returned with its worker killed; a queued one dropped."""
    nm = ready_nm(CPU=1)
    [(_, granted)] = sends_to(nm.handle(lease_request("l1", requester="node-1.w7"), 0.0), p.LeaseGranted)
    nm.handle(lease_request("l2", requester="node-1.w7"), 0.0)
    out = nm.handle(p.ProcessDied(address="node-1.w7"), 0.1)
    assert of_type(out, p.KillWorker) == [p.KillWorker(worker_id=granted.worker_id, reason="lease returned with exit")]
    assert nm.leases == {} and nm.available.get("CPU") == 1
    nm.validate()
