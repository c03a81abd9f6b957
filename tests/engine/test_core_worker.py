"""CoreWorker as a pure state machine: submitting tasks, leases, replies, reference counting,
and the executor side.

Invariants: RC1 an owned object that is held or has borrowers is in the reference table;
RC2 counts are never negative (rayref/core/references.py); CW1 every pending task's returns
are owned here (rayref/core/core_worker.py). Tests call ``validate()`` as they go.
"""
from __future__ import annotations

import dataclasses

import pytest

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.core_worker import CoreWorker
from rayref.core.task_submitter import ChannelState, TaskState

from engine_helpers import DRIVER, hold, of_type, sends, sends_to, spec

BIG = EngineConfig().inline_threshold + 1


def driver(**config) -> CoreWorker:
    """A driver's core worker; leases go back as soon as they are idle unless ``lease_linger`` is given."""
    return CoreWorker(DRIVER, "node-1", EngineConfig(**{"lease_linger": 0.0, **config}), is_driver=True)


def ref(object_id: str, owner: str = DRIVER) -> p.RefInfo:
    return p.RefInfo(object_id=object_id, owner=owner)


def submit(cw: CoreWorker, s: p.TaskSpec) -> list:
    """What the API does for ``f.remote()``: submit, then hold one ObjectRef per return."""
    cw.submit_task(s)
    for object_id in s.return_ids:
        hold(cw, ref(object_id))
    cw.validate()
    return cw.drain()


def value(data: bytes, nbytes: int | None = None, **kw) -> p.Blob:
    return p.Blob(data=data, nbytes=len(data) if nbytes is None else nbytes, **kw)


def reply(s: p.TaskSpec, worker_id: str, *blobs: p.Blob, **kw) -> p.TaskReply:
    returns = tuple(p.ReturnValue(object_id=oid, blob=b, nbytes=b.nbytes) for oid, b in zip(s.return_ids, blobs))
    return p.TaskReply(task_id=s.task_id, worker_id=worker_id, returns=returns, **kw)


def drop(cw: CoreWorker, object_id: str) -> list:
    """An ObjectRef finalizer ran: the decref is applied on the next entry into the engine."""
    cw.pending_decrefs.append(object_id)
    cw.release_dropped()
    cw.validate()
    return cw.drain()


def run_on_lease(cw: CoreWorker, s: p.TaskSpec, worker_id: str = "node-1.w1", now: float = 0.0):
    """Submit ``s`` and grant its lease request; returns (lease request, push, commands)."""
    out = submit(cw, s)
    [request] = sends(out, p.RequestWorkerLease)
    out = cw.handle(p.LeaseGranted(lease_id=request.lease_id, worker_id=worker_id, node_id="node-1"), now)
    [push] = sends(out, p.PushTask, to=worker_id)
    return request, push, out


# ------------------------------------------------------------------ submitting


def test_submit_task_requests_a_lease_from_its_local_node():
    cw = driver()
    s = spec("t1")
    out = submit(cw, s)
    [(to, request)] = sends_to(out, p.RequestWorkerLease)
    assert to == "node-1"
    assert request.requester == DRIVER and request.spec == s and request.spilled == 0
    assert cw.tasks["t1"].state == TaskState.QUEUED


def test_lease_granted_pushes_the_task_and_the_reply_makes_results_available():
    """LeaseGranted -> PushTask to the leased worker; TaskReply -> the result wakes the getter and
    the lease (with nothing left to run) goes back to the node."""
    cw = driver()
    s = spec("t1")
    request, push, _ = run_on_lease(cw, s)
    assert push.task_id == "t1" and push.spec == s and push.reply_to == DRIVER
    assert push.lease_id == request.lease_id
    assert cw.tasks["t1"].state == TaskState.RUNNING
    waiter = cw.begin_get([ref("t1.r0")], timeout=None)
    assert not waiter.done
    assert of_type(cw.drain(), p.Wake) == []
    out = cw.handle(reply(s, "node-1.w1", value(b"42")), 0.5)
    assert of_type(out, p.Wake) == [p.Wake(waiter=waiter)]
    assert waiter.done and not waiter.timed_out
    assert cw.results(waiter) == [value(b"42")]
    assert sends_to(out, p.ReturnWorkerLease) == [
        ("node-1", p.ReturnWorkerLease(lease_id=request.lease_id, worker_id="node-1.w1"))]
    assert "t1" not in cw.tasks
    cw.validate()


def test_get_of_an_already_finished_task_is_done_at_once():
    cw = driver()
    s = spec("t1")
    run_on_lease(cw, s)
    cw.handle(reply(s, "node-1.w1", value(b"7")), 0.1)
    waiter = cw.begin_get([ref("t1.r0")], timeout=None)
    assert waiter.done and cw.results(waiter) == [value(b"7")]


def test_get_with_timeout_times_out_on_its_timer():
    cw = driver()
    run_on_lease(cw, spec("t1"))
    waiter = cw.begin_get([ref("t1.r0")], timeout=2.0)
    [timer] = of_type(cw.drain(), p.StartTimer)
    assert timer.delay == 2.0
    out = cw.handle(p.TimerFired(key=timer.key), 2.0)
    assert of_type(out, p.Wake) == [p.Wake(waiter=waiter)] and waiter.timed_out


def test_a_reply_from_another_worker_is_ignored():
    cw = driver()
    s = spec("t1")
    run_on_lease(cw, s)
    cw.handle(reply(s, "node-1.w99", value(b"x")), 0.1)
    assert cw.tasks["t1"].state == TaskState.RUNNING
    assert not cw.refs.get("t1.r0").ready


def test_lease_is_reused_for_tasks_of_the_same_scheduling_key():
    """Two tasks of one key: two requests; the first lease runs both, the second is returned unused."""
    cw = driver()
    s1, s2 = spec("t1"), spec("t2")
    out = submit(cw, s1) + submit(cw, s2)
    r1, r2 = sends(out, p.RequestWorkerLease)
    out = cw.handle(p.LeaseGranted(lease_id=r1.lease_id, worker_id="node-1.w1", node_id="node-1"), 0.1)
    assert [m.task_id for m in sends(out, p.PushTask)] == ["t1"]
    assert sends(out, p.RequestWorkerLease) == []
    out = cw.handle(reply(s1, "node-1.w1", value(b"1")), 0.2)
    assert [(to, m.task_id) for to, m in sends_to(out, p.PushTask)] == [("node-1.w1", "t2")]
    assert sends(out, p.ReturnWorkerLease) == []
    out = cw.handle(p.LeaseGranted(lease_id=r2.lease_id, worker_id="node-1.w2", node_id="node-1"), 0.3)
    assert sends(out, p.PushTask) == []
    assert sends_to(out, p.ReturnWorkerLease) == [
        ("node-1", p.ReturnWorkerLease(lease_id=r2.lease_id, worker_id="node-1.w2"))]
    out = cw.handle(reply(s2, "node-1.w1", value(b"2")), 0.4)
    assert [m.lease_id for m in sends(out, p.ReturnWorkerLease)] == [r1.lease_id]
    assert cw.tasks == {} and cw.normal.leases == {} and cw.normal.keys == {}


def test_pending_lease_requests_are_capped_per_scheduling_key():
    config = EngineConfig(max_pending_lease_requests=3)
    cw = CoreWorker(DRIVER, "node-1", config, is_driver=True)
    out = []
    for i in range(8):
        out += submit(cw, spec(f"t{i}"))
    assert len(sends(out, p.RequestWorkerLease)) == 3


def test_spilled_lease_is_requested_again_from_the_named_node():
    cw = driver()
    out = submit(cw, spec("t1"))
    [request] = sends(out, p.RequestWorkerLease)
    out = cw.handle(p.LeaseSpilled(lease_id=request.lease_id, node_id="node-2"), 0.1)
    [(to, again)] = sends_to(out, p.RequestWorkerLease)
    assert to == "node-2" and again.spilled == 1 and again.lease_id != request.lease_id
    out = cw.handle(p.LeaseGranted(lease_id=again.lease_id, worker_id="node-2.w1", node_id="node-2"), 0.2)
    assert [to for to, _ in sends_to(out, p.PushTask)] == ["node-2.w1"]


def test_non_final_rejection_asks_the_local_node_again():
    cw = driver()
    [request] = sends(submit(cw, spec("t1")), p.RequestWorkerLease)
    out = cw.handle(p.LeaseRejected(lease_id=request.lease_id, reason="busy", final=False), 0.1)
    [(to, again)] = sends_to(out, p.RequestWorkerLease)
    assert to == "node-1" and again.spilled == 0
    assert cw.tasks["t1"].state == TaskState.QUEUED


def test_final_rejection_fails_the_task_unschedulable():
    cw = driver()
    s = spec("t1", resources={"GPU": 1})
    [request] = sends(submit(cw, s), p.RequestWorkerLease)
    out = cw.handle(p.LeaseInfeasible(lease_id=request.lease_id, reason="no GPU anywhere"), 0.1)
    [log] = of_type(out, p.Log)
    assert log.level == "warning" and "no GPU anywhere" in log.text
    assert of_type(cw.handle(p.LeaseInfeasible(lease_id=request.lease_id, reason="again"), 0.2), p.Log) == []
    waiter = cw.begin_get([ref("t1.r0")], None)
    out = cw.handle(p.LeaseRejected(lease_id=request.lease_id, reason="never", final=True), 1.0)
    assert of_type(out, p.Wake) == [p.Wake(waiter=waiter)]
    [result] = cw.results(waiter)
    assert result.is_error and result.system_error == ("TaskUnschedulableError", "never")
    assert cw.tasks == {}
    cw.validate()


def test_dependent_task_waits_for_its_dependency_and_gets_it_inline():
    cw = driver()
    s1 = spec("t1", name="f")
    s2 = spec("t2", name="g", dependencies=(ref("t1.r0"),))
    request1, push1, _ = run_on_lease(cw, s1)
    out = submit(cw, s2)
    assert sends(out, p.RequestWorkerLease) == []
    assert cw.tasks["t2"].state == TaskState.RESOLVING
    out = cw.handle(reply(s1, "node-1.w1", value(b"dep")), 0.1)
    [request2] = sends(out, p.RequestWorkerLease)
    assert request2.spec.task_id == "t2"
    out = cw.handle(p.LeaseGranted(lease_id=request2.lease_id, worker_id="node-1.w2", node_id="node-1"), 0.2)
    [push2] = sends(out, p.PushTask)
    assert push2.args == (p.ResolvedArg(ref=ref("t1.r0"), blob=value(b"dep")),)


def test_failed_dependency_fails_the_dependent_task_without_running_it():
    cw = driver()
    s1 = spec("t1", name="f")
    s2 = spec("t2", name="g", dependencies=(ref("t1.r0"),))
    run_on_lease(cw, s1)
    submit(cw, s2)
    error = p.Blob(data=b"boom", nbytes=4, is_error=True)
    out = cw.handle(reply(s1, "node-1.w1", error), 0.1)
    assert sends(out, p.RequestWorkerLease) == [] and sends(out, p.PushTask) == []
    waiter = cw.begin_get([ref("t2.r0")], None)
    assert waiter.done and cw.results(waiter) == [error]


def test_large_dependency_travels_by_location():
    cw = driver()
    s1 = spec("t1", name="f")
    s2 = spec("t2", name="g", dependencies=(ref("t1.r0"),))
    run_on_lease(cw, s1)
    submit(cw, s2)
    big = p.TaskReply(task_id="t1", worker_id="node-1.w1", returns=(
        p.ReturnValue(object_id="t1.r0", node_id="node-3", nbytes=BIG),))
    out = cw.handle(big, 0.1)
    [request2] = sends(out, p.RequestWorkerLease)
    out = cw.handle(p.LeaseGranted(lease_id=request2.lease_id, worker_id="node-1.w2", node_id="node-1"), 0.2)
    [push2] = sends(out, p.PushTask)
    assert push2.args == (p.ResolvedArg(ref=ref("t1.r0"), blob=None, locations=("node-3",)),)


# ------------------------------------------------------------------ failures and retries


def test_worker_death_retries_the_task_then_fails_it_worker_crashed():
    """RETRY1: a task whose leased worker dies is retried while retries last, then fails WorkerCrashedError."""
    cw = driver()
    s = spec("t1", max_retries=1)
    request, push, _ = run_on_lease(cw, s)
    out = cw.handle(p.LeasedWorkerDied(lease_id=request.lease_id, worker_id="node-1.w1", reason="killed"), 1.0)
    [retry] = sends(out, p.RequestWorkerLease)
    assert retry.spec.attempt == 1 and retry.spec.task_id == "t1"
    out = cw.handle(p.LeaseGranted(lease_id=retry.lease_id, worker_id="node-1.w2", node_id="node-1"), 1.1)
    [push2] = sends(out, p.PushTask)
    assert push2.spec.attempt == 1
    waiter = cw.begin_get([ref("t1.r0")], None)
    out = cw.handle(p.LeasedWorkerDied(lease_id=retry.lease_id, worker_id="node-1.w2", reason="killed"), 2.0)
    assert sends(out, p.RequestWorkerLease) == []
    [result] = cw.results(waiter)
    assert waiter.done and result.system_error[0] == "WorkerCrashedError"
    cw.validate()


def test_retryable_error_reply_resubmits_while_retries_remain():
    cw = driver()
    s = spec("t1", max_retries=1, retry_exceptions=True)
    request, _, _ = run_on_lease(cw, s)
    err = p.Blob(data=b"e", nbytes=1, is_error=True)
    out = cw.handle(reply(s, "node-1.w1", err, retryable_error=True), 0.1)
    assert sends(out, p.ReturnWorkerLease)  # the lease had nothing else queued
    [retry] = sends(out, p.RequestWorkerLease)
    assert retry.spec.attempt == 1
    out = cw.handle(p.LeaseGranted(lease_id=retry.lease_id, worker_id="node-1.w2", node_id="node-1"), 0.2)
    [push] = sends(out, p.PushTask)
    cw.handle(reply(push.spec, "node-1.w2", err, retryable_error=True), 0.3)
    waiter = cw.begin_get([ref("t1.r0")], None)
    assert waiter.done and cw.results(waiter) == [err]  # no retries left: the error is the result


# ------------------------------------------------------------------ reference counting


def stored_put(cw, blob):
    """Put ``blob`` and deliver the node's ObjectStored; the PutObject stays in the outbox."""
    waiter = cw.put(blob)
    out = cw.drain()
    for _, put in sends_to(out, p.PutObject):
        cw.handle(p.ObjectStored(object_id=put.object_id), 0.0)
    cw.out.extend(out)
    return waiter.value


def test_dropping_the_last_ref_of_a_stored_object_frees_it_in_its_node():
    """RC1, LIFE1: a put larger than the inline threshold goes to the node store; the last local ref
    going away frees it there and removes it from the table."""
    cw = driver()
    waiter = cw.put(value(b"big", BIG))
    info = waiter.value
    [(to, put)] = sends_to(cw.drain(), p.PutObject)
    assert to == "node-1" and put.object_id == info.object_id and put.owner == DRIVER
    assert put.reply_to == DRIVER and not waiter.done  # put waits until the node has stored it
    cw.handle(p.ObjectStored(object_id=info.object_id), 0.0)
    assert waiter.done
    hold(cw, info)
    hold(cw, info)
    assert drop(cw, info.object_id) == []  # one ObjectRef remains
    assert sends_to(drop(cw, info.object_id), p.FreeObjects) == [
        ("node-1", p.FreeObjects(object_ids=(info.object_id,)))]
    assert cw.refs.get(info.object_id) is None


def test_small_put_stays_inline_and_needs_no_free():
    cw = driver()
    info = cw.put(value(b"small")).value
    assert sends(cw.drain(), p.PutObject) == []
    hold(cw, info)
    assert drop(cw, info.object_id) == []
    assert cw.refs.get(info.object_id) is None


def test_stored_task_return_is_freed_in_the_node_that_holds_it():
    cw = driver()
    s = spec("t1")
    run_on_lease(cw, s)
    cw.handle(p.TaskReply(task_id="t1", worker_id="node-1.w1", returns=(
        p.ReturnValue(object_id="t1.r0", node_id="node-2", nbytes=BIG),)), 0.1)
    assert cw.refs.get("t1.r0").locations == ["node-2"]
    assert sends_to(drop(cw, "t1.r0"), p.FreeObjects) == [("node-2", p.FreeObjects(object_ids=("t1.r0",)))]


def test_borrower_keeps_an_object_alive_until_remove_borrower():
    """RC1: an owned object with a borrower stays in the table after the owner's last local ref."""
    cw = driver()
    info = stored_put(cw, value(b"big", BIG))
    cw.drain()
    hold(cw, info)
    cw.handle(p.AddBorrower(object_id=info.object_id, borrower="node-2.w1"), 0.1)
    assert drop(cw, info.object_id) == []
    entry = cw.refs.get(info.object_id)
    assert entry is not None and list(entry.borrowers) == ["node-2.w1"]
    out = cw.handle(p.RemoveBorrower(object_id=info.object_id, borrower="node-2.w1"), 0.2)
    assert sends_to(out, p.FreeObjects) == [("node-1", p.FreeObjects(object_ids=(info.object_id,)))]
    assert cw.refs.get(info.object_id) is None
    cw.validate()


def test_submitted_task_holds_its_argument_until_it_finishes():
    """RC1 via ``submitted``: dropping the ObjectRef of an argument does not free it while the
    task is pending; its reply does."""
    cw = driver()
    info = stored_put(cw, value(b"big", BIG))
    cw.drain()
    hold(cw, info)
    s = spec("t1", dependencies=(info,))
    request, push, _ = run_on_lease(cw, s)
    assert drop(cw, info.object_id) == []
    assert cw.refs.get(info.object_id).submitted == 1
    out = cw.handle(reply(s, "node-1.w1", value(b"ok")), 0.1)
    assert sends(out, p.FreeObjects) == [p.FreeObjects(object_ids=(info.object_id,))]
    cw.validate()


def test_worker_still_holding_an_argument_becomes_a_borrower_through_its_reply():
    """RC1, BOR1: The borrower protocol's first way: a ref reported in TaskReply.borrowed is registered
    before the task's own hold ends, so the object survives until RemoveBorrower."""
    cw = driver()
    info = stored_put(cw, value(b"big", BIG))
    cw.drain()
    hold(cw, info)
    s = spec("t1", dependencies=(info,))
    run_on_lease(cw, s)
    drop(cw, info.object_id)
    out = cw.handle(reply(s, "node-1.w1", value(b"ok"), borrowed=(info,)), 0.1)
    assert sends(out, p.FreeObjects) == []
    assert list(cw.refs.get(info.object_id).borrowers) == ["node-1.w1"]
    out = cw.handle(p.RemoveBorrower(object_id=info.object_id, borrower="node-1.w1"), 0.2)
    assert sends(out, p.FreeObjects) == [p.FreeObjects(object_ids=(info.object_id,))]


def test_borrower_side_registers_with_the_owner_and_reports_release():
    """Borrower way 3 (references.py): a process deserializing someone else's ref registers as
    borrower at once; its last drop tells the owner (RemoveBorrower)."""
    worker = CoreWorker("node-2.w1", "node-2", EngineConfig())
    foreign = ref("node-1.driver.p1", owner=DRIVER)
    hold(worker, foreign, register=True)
    assert sends_to(worker.drain(), p.AddBorrower) == [
        (DRIVER, p.AddBorrower(object_id=foreign.object_id, borrower="node-2.w1"))]
    hold(worker, foreign, register=True)
    assert worker.drain() == []  # registered once
    assert drop(worker, foreign.object_id) == []
    assert sends_to(drop(worker, foreign.object_id), p.RemoveBorrower) == [
        (DRIVER, p.RemoveBorrower(object_id=foreign.object_id, borrower="node-2.w1"))]
    assert worker.refs.get(foreign.object_id) is None


def test_contained_refs_live_as_long_as_the_outer_object():
    """RC1 (``contained_in``): an object whose value holds a ref keeps that ref's object alive,
    and only as long as it lives itself: releasing the outer object frees the inner one."""
    cw = driver()
    inner = stored_put(cw, value(b"inner", BIG))
    hold(cw, inner)
    outer = cw.put(p.Blob(data=b"outer", nbytes=5, contained=(inner,))).value
    hold(cw, outer)
    cw.drain()
    assert drop(cw, inner.object_id) == []
    assert cw.refs.get(inner.object_id).contained_in == 1
    out = drop(cw, outer.object_id)
    assert sends(out, p.FreeObjects) == [p.FreeObjects(object_ids=(inner.object_id,))]
    assert cw.refs.get(inner.object_id) is None and cw.refs.get(outer.object_id) is None


def test_owner_answers_object_status_to_a_borrower_when_ready():
    cw = driver()
    s = spec("t1")
    run_on_lease(cw, s)
    out = cw.handle(p.GetObjectStatus(object_id="t1.r0", requester="node-2.w1"), 0.1)
    assert sends(out, p.ObjectStatus) == []
    out = cw.handle(reply(s, "node-1.w1", value(b"v")), 0.2)
    assert sends_to(out, p.ObjectStatus) == [
        ("node-2.w1", p.ObjectStatus(object_id="t1.r0", blob=value(b"v"), locations=()))]
    out = cw.handle(p.GetObjectStatus(object_id="gone", requester="node-2.w1"), 0.3)
    [status] = sends(out, p.ObjectStatus)
    assert status.error[0] == "ObjectLostError"


# ------------------------------------------------------------------ actors (caller side)


def test_actor_calls_are_pushed_in_submission_order_once_alive():
    """ORD1 (caller side): calls submitted before the actor is ALIVE are pushed in submission order once
    it is."""
    cw = driver()
    creation = spec("a1.create", name="A", kind=p.TaskKind.ACTOR_CREATION, actor_id="a1",
                    actor=p.ActorOptions())
    cw.create_actor(creation)
    [(to, register)] = sends_to(cw.drain(), p.RegisterActor)
    assert to == p.CONTROL_PLANE and register.actor_id == "a1"
    calls = [spec(f"c{i}", name="A.m", kind=p.TaskKind.ACTOR_TASK, actor_id="a1", method="m") for i in range(3)]
    for c in calls:
        cw.submit_actor_task(c)
    assert sends(cw.drain(), p.PushTask) == []
    info = p.ActorInfo(actor_id="a1", state="ALIVE", address="node-1.w5", node_id="node-1")
    out = cw.handle(p.ActorStateChanged(actor_id="a1", info=info), 0.5)
    pushes = sends_to(out, p.PushTask)
    assert [(to, m.task_id, cw.tasks[m.task_id].sequence_no) for to, m in pushes] == [
        ("node-1.w5", "c0", 1), ("node-1.w5", "c1", 2), ("node-1.w5", "c2", 3)]
    assert cw.actors.channels["a1"].state == ChannelState.ALIVE
    cw.validate()


def test_actor_death_fails_in_flight_calls_without_retries():
    cw = driver()
    creation = spec("a1.create", name="A", kind=p.TaskKind.ACTOR_CREATION, actor_id="a1", actor=p.ActorOptions())
    cw.create_actor(creation)
    call = spec("c0", name="A.m", kind=p.TaskKind.ACTOR_TASK, actor_id="a1", method="m")
    cw.submit_actor_task(call)
    hold(cw, ref("c0.r0"))
    alive = p.ActorInfo(actor_id="a1", state="ALIVE", address="node-1.w5", node_id="node-1")
    cw.handle(p.ActorStateChanged(actor_id="a1", info=alive), 0.1)
    waiter = cw.begin_get([ref("c0.r0")], None)
    dead = p.ActorInfo(actor_id="a1", state="DEAD", death_cause="oom")
    out = cw.handle(p.ActorStateChanged(actor_id="a1", info=dead), 0.2)
    [timer] = of_type(out, p.StartTimer)
    assert not waiter.done and timer.delay == EngineConfig().actor_reply_grace
    cw.handle(p.TimerFired(key=timer.key), 0.2 + timer.delay)
    [result] = cw.results(waiter)
    assert waiter.done and result.system_error[0] == "ActorDiedError" and "oom" in result.system_error[1]


def test_an_idle_lease_lingers_for_the_next_task_of_its_key_then_goes_back():
    cw = driver(lease_linger=0.01)
    first, second = spec("t1"), spec("t2")
    request, _, _ = run_on_lease(cw, first)
    out = cw.handle(reply(first, "node-1.w1", value(b"1")), 0.5)
    [timer] = of_type(out, p.StartTimer)
    assert timer.delay == 0.01 and sends(out, p.ReturnWorkerLease) == []
    out = submit(cw, second)
    assert sends(out, p.RequestWorkerLease) == []
    [(to, push)] = sends_to(out, p.PushTask)
    assert to == "node-1.w1" and push.task_id == "t2" and push.lease_id == request.lease_id
    assert sends(cw.handle(p.TimerFired(key=timer.key), 0.51), p.ReturnWorkerLease) == []  # used since
    out = cw.handle(reply(second, "node-1.w1", value(b"2")), 0.52)
    [timer] = of_type(out, p.StartTimer)
    out = cw.handle(p.TimerFired(key=timer.key), 0.53)
    assert sends_to(out, p.ReturnWorkerLease) == [
        ("node-1", p.ReturnWorkerLease(lease_id=request.lease_id, worker_id="node-1.w1"))]
    assert cw.normal.keys == {} and cw.normal.leases == {}
    cw.validate()


def test_a_reply_that_arrives_after_the_news_of_death_still_counts():
    """The reply of a call can travel a faster path than its actor's death; within the grace it wins."""
    cw = driver()
    cw.create_actor(spec("a1.create", name="A", kind=p.TaskKind.ACTOR_CREATION, actor_id="a1", actor=p.ActorOptions()))
    call = spec("c0", name="A.m", kind=p.TaskKind.ACTOR_TASK, actor_id="a1", method="m")
    cw.submit_actor_task(call)
    hold(cw, ref("c0.r0"))
    alive = p.ActorInfo(actor_id="a1", state="ALIVE", address="node-1.w5", node_id="node-1")
    cw.handle(p.ActorStateChanged(actor_id="a1", info=alive), 0.1)
    waiter = cw.begin_get([ref("c0.r0")], None)
    out = cw.handle(p.ActorStateChanged(actor_id="a1", info=p.ActorInfo(actor_id="a1", state="DEAD")), 0.2)
    [timer] = of_type(out, p.StartTimer)
    cw.handle(reply(call, "node-1.w5", value(b"done")), 0.21)
    cw.handle(p.TimerFired(key=timer.key), 0.2 + timer.delay)
    [result] = cw.results(waiter)
    assert not result.is_error and result.data == b"done"
    cw.validate()


# ------------------------------------------------------------------ executor side


def worker_cw() -> CoreWorker:
    return CoreWorker("node-1.w1", "node-1", EngineConfig())


def test_pushed_task_with_inline_args_executes_and_replies():
    w = worker_cw()
    s = spec("t1", dependencies=(ref("x"),))
    arg = p.ResolvedArg(ref=ref("x"), blob=value(b"arg"))
    out = w.handle(p.PushTask(task_id="t1", spec=s, reply_to=DRIVER, args=(arg,), lease_id="l1", gpu_ids=(1,)), 0.0)
    [execute] = of_type(out, p.ExecuteTask)
    assert execute.spec == s and execute.args == (value(b"arg"),) and execute.gpu_ids == (1,)
    assert execute.node_id == "node-1"
    out = w.handle(p.TaskExecuted(task_id="t1", returns=(value(b"res"),)), 0.1)
    [(to, r)] = sends_to(out, p.TaskReply)
    assert to == DRIVER and r.task_id == "t1" and r.worker_id == "node-1.w1"
    assert r.returns == (p.ReturnValue(object_id="t1.r0", blob=value(b"res"), nbytes=3),)
    w.validate()


def test_large_return_is_put_in_the_node_store_and_replied_by_location():
    w = worker_cw()
    s = spec("t1")
    w.handle(p.PushTask(task_id="t1", spec=s, reply_to=DRIVER), 0.0)
    big = value(b"res", BIG)
    out = w.handle(p.TaskExecuted(task_id="t1", returns=(big,)), 0.1)
    assert sends_to(out, p.PutObject) == [("node-1", p.PutObject(object_id="t1.r0", owner=DRIVER, blob=big))]
    [r] = sends(out, p.TaskReply)
    assert r.returns == (p.ReturnValue(object_id="t1.r0", node_id="node-1", nbytes=BIG),)


def test_argument_by_location_is_pulled_through_the_local_node_before_running():
    w = worker_cw()
    s = spec("t1", dependencies=(ref("x"),))
    arg = p.ResolvedArg(ref=ref("x"), locations=("node-3",))
    out = w.handle(p.PushTask(task_id="t1", spec=s, reply_to=DRIVER, args=(arg,)), 0.0)
    assert of_type(out, p.ExecuteTask) == []
    assert sends_to(out, p.PullObject) == [
        ("node-1", p.PullObject(object_id="x", requester="node-1.w1", locations=("node-3",)))]
    out = w.handle(p.ObjectLocal(object_id="x", blob=value(b"X", BIG)), 0.1)
    [execute] = of_type(out, p.ExecuteTask)
    assert execute.args == (value(b"X", BIG),)


def test_unavailable_argument_fails_the_task_with_object_lost():
    w = worker_cw()
    s = spec("t1", dependencies=(ref("x"),))
    w.handle(p.PushTask(task_id="t1", spec=s, reply_to=DRIVER,
                        args=(p.ResolvedArg(ref=ref("x"), locations=("node-3",)),)), 0.0)
    out = w.handle(p.ObjectUnavailable(object_id="x", reason="gone"), 0.1)
    assert of_type(out, p.ExecuteTask) == []
    [r] = sends(out, p.TaskReply)
    assert r.returns[0].blob.system_error[0] == "ObjectLostError"


def test_worker_runs_one_task_at_a_time_and_queues_the_rest():
    w = worker_cw()
    s1, s2 = spec("t1"), spec("t2")
    assert len(of_type(w.handle(p.PushTask(task_id="t1", spec=s1, reply_to=DRIVER), 0.0), p.ExecuteTask)) == 1
    assert of_type(w.handle(p.PushTask(task_id="t2", spec=s2, reply_to=DRIVER), 0.0), p.ExecuteTask) == []
    out = w.handle(p.TaskExecuted(task_id="t1", returns=(value(b"1"),)), 0.1)
    assert [e.spec.task_id for e in of_type(out, p.ExecuteTask)] == ["t2"]


def test_get_inside_a_running_task_blocks_the_worker_and_lends_its_cpus():
    """While a normal task waits in get, the worker sends WorkerBlocked; when it is woken, WorkerUnblocked."""
    w = worker_cw()
    w.handle(p.PushTask(task_id="t1", spec=spec("t1"), reply_to=DRIVER), 0.0)
    foreign = ref("node-1.driver.p9")
    hold(w, foreign, register=True)
    w.drain()
    waiter = w.begin_get([foreign], None)
    out = w.drain()
    assert sends_to(out, p.WorkerBlocked) == [("node-1", p.WorkerBlocked(worker_id="node-1.w1"))]
    assert sends_to(out, p.GetObjectStatus) == [
        (DRIVER, p.GetObjectStatus(object_id=foreign.object_id, requester="node-1.w1"))]
    out = w.handle(p.ObjectStatus(object_id=foreign.object_id, blob=value(b"v")), 0.1)
    assert sends_to(out, p.WorkerUnblocked) == [("node-1", p.WorkerUnblocked(worker_id="node-1.w1"))]
    assert of_type(out, p.Wake) == [p.Wake(waiter=waiter)]
    assert w.results(waiter) == [value(b"v")]


def test_cw1_returns_of_pending_tasks_are_owned():
    """CW1 is checked by validate(): a pending task whose return is held as a borrowed ref fails it."""
    cw = driver()
    cw.submit_task(spec("t1"))
    cw.validate()
    entry = cw.refs.get("t1.r0")
    cw.refs.refs["t1.r0"] = dataclasses.replace(entry, owned=False, owner="someone-else")
    cw.refs.computing.discard("t1.r0")  # as a borrowed entry would be (RC4 holds; only CW1 is broken)
    with pytest.raises(AssertionError, match="CW1"):
        cw.validate()


def test_rc4_available_and_computing_follow_the_references():
    """RC4: a return is 'computing' until its reply, then 'available'; validate() catches a stale mark."""
    cw = driver()
    cw.submit_task(spec("t1"))
    assert "t1.r0" in cw.refs.computing and "t1.r0" not in cw.refs.available
    cw.refs.available.add("t1.r0")
    with pytest.raises(AssertionError, match="RC4"):
        cw.validate()


def test_wait_on_objects_being_computed_registers_once_and_wakes_on_the_first():
    """RC4: a wait for returns this driver computes is one registration (not one per object); a
    return stored elsewhere is pulled before it counts."""
    cw = driver()
    s1, s2, s3 = spec("t1", name="f"), spec("t2", name="g"), spec("t3", name="h")
    for i, s in enumerate((s1, s2, s3), 1):
        run_on_lease(cw, s, f"node-1.w{i}")
    waiter = cw.begin_get([ref("t1.r0"), ref("t2.r0"), ref("t3.r0")], None, True, 1)
    assert not waiter.done and cw.computing_waiters == [waiter]
    assert all(not cw.refs.get(f"t{i}.r0").waiters for i in (1, 2, 3))
    big = p.TaskReply(task_id="t3", worker_id="node-1.w3", returns=(
        p.ReturnValue(object_id="t3.r0", node_id="node-3", nbytes=BIG),))
    out = cw.handle(big, 0.1)
    [(_, pull)] = sends_to(out, p.PullObject)
    assert pull.object_id == "t3.r0" and not of_type(out, p.Wake), "a return elsewhere is fetched first"
    out = cw.handle(reply(s2, "node-1.w2", value(b"two")), 0.2)
    assert of_type(out, p.Wake) == [p.Wake(waiter=waiter)] and cw.computing_waiters == []
    assert cw.ready_ids(waiter, 1) == ["t2.r0"]
    cw.validate()


def test_an_actor_ending_out_of_scope_first_gives_back_its_lingering_leases():
    """P-ACT-7: the node kills workers still leased to a process that died, so an actor that ends
    on purpose returns the leases it keeps idle (lease_linger) before asking to be killed."""
    actor = CoreWorker("node-1.w5", "node-1", EngineConfig(lease_linger=0.01))
    create = spec("a1.create", name="A", kind=p.TaskKind.ACTOR_CREATION, actor_id="a1", actor=p.ActorOptions(),
                  owner=DRIVER)
    actor.handle(p.PushTask(task_id=create.task_id, spec=create, reply_to=DRIVER), 0.0)
    actor.handle(p.TaskExecuted(task_id=create.task_id, returns=(value(b""),)), 0.0)
    inner = spec("t1", owner="node-1.w5")
    request, _, _ = run_on_lease(actor, inner)
    out = actor.handle(reply(inner, "node-1.w1", value(b"1")), 0.1)
    assert sends(out, p.ReturnWorkerLease) == [], "the idle lease lingers"
    terminate = spec("a1.end", name="__rayref_terminate__", kind=p.TaskKind.ACTOR_TASK, actor_id="a1",
                     method="__rayref_terminate__", owner=DRIVER)
    out = actor.handle(p.PushTask(task_id=terminate.task_id, spec=terminate, reply_to=DRIVER), 0.105)
    kinds = [type(m) for m in sends(out) if isinstance(m, (p.ReturnWorkerLease, p.KillActor))]
    assert kinds == [p.ReturnWorkerLease, p.KillActor]
    assert sends(out, p.ReturnWorkerLease) == [p.ReturnWorkerLease(lease_id=request.lease_id, worker_id="node-1.w1")]


def test_an_idle_worker_agrees_to_exit_only_if_it_holds_nothing():
    """P-LEASE-12: asked by its node (ExitIfIdle), a worker holding nothing agrees; one that owns an
    object someone may still read (its ref held) refuses, as Ray's workers do."""
    worker = CoreWorker("node-1.w2", "node-1", EngineConfig(), is_driver=False)
    [answer] = sends(worker.handle(p.ExitIfIdle(worker_id="node-1.w2"), 1.0), p.ExitIfIdleReply, to="node-1")
    assert answer == p.ExitIfIdleReply(worker_id="node-1.w2", exiting=True)
    info = worker.put(value(b"kept")).value
    hold(worker, info)
    [answer] = sends(worker.handle(p.ExitIfIdle(worker_id="node-1.w2"), 2.0), p.ExitIfIdleReply, to="node-1")
    assert answer.exiting is False
    worker.validate()
