"""The executor side of a core worker: tasks pushed to this worker, run in arrival order.

A pushed task first gets its large arguments pulled into this node's store; then it waits its
turn. Executions start strictly in the order they arrived (so one caller's calls to an actor
run in submission order, even when an early call waits for a large argument), at most
``max_concurrency`` at a time (1 for normal tasks and plain actors). The transport runs the
user code (``ExecuteTask``) and reports ``TaskExecuted``; the receiver replies to the caller
with inline values or store locations, the borrowed references it still holds, and
registrations of the caller as borrower of references its results contain.

An actor whose last handle is gone gets a terminate call; it takes effect once every call
received before it has finished.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rayref.core import protocol as p

TERMINATE = "__rayref_terminate__"


@dataclass(eq=False, slots=True)
class Execution:
    push: p.PushTask
    blobs: list
    missing: int
    started: bool = False


class TaskReceiver:
    def __init__(self, cw):
        self.cw = cw
        self.executions: dict[str, Execution] = {}
        self.exec_queue: deque = deque()
        self.arg_pulls: dict[str, list[str]] = {}
        self.running = 0
        self.max_concurrency = 1
        self.actor_id = ""
        self.actor_gpu_ids: tuple[int, ...] = ()
        self.normal_running = 0
        self.terminating = False

    def on_push(self, msg: p.PushTask) -> None:
        spec = msg.spec
        if spec.method == TERMINATE:
            self.terminating = True
            self._maybe_terminate()
            return
        if spec.kind == p.TaskKind.ACTOR_CREATION:
            self.actor_id = spec.actor_id
            self.actor_gpu_ids = msg.gpu_ids
            self.max_concurrency = spec.actor.max_concurrency
        execution = Execution(msg, [a.blob for a in msg.args], sum(a.blob is None for a in msg.args))
        self.executions[msg.task_id] = execution
        self.exec_queue.append(msg.task_id)
        for arg in msg.args:
            if arg.blob is None:
                waiting = self.arg_pulls.setdefault(arg.ref.object_id, [])
                waiting.append(msg.task_id)
                if len(waiting) == 1:
                    self.cw.send(self.cw.node_id, p.PullObject(object_id=arg.ref.object_id, requester=self.cw.address,
                                                         locations=arg.locations))
        self.start_ready()

    def fill_arg(self, execution: Execution, object_id: str, blob: p.Blob) -> None:
        for index, arg in enumerate(execution.push.args):
            if arg.ref.object_id == object_id and execution.blobs[index] is None:
                execution.blobs[index] = blob
                execution.missing -= 1
        self.start_ready()

    def start_ready(self) -> None:
        """Start executions in the order they arrived (an actor's calls in submission order)."""
        while self.exec_queue and self.running < self.max_concurrency:
            head = self.executions.get(self.exec_queue[0])
            if head is None:
                self.exec_queue.popleft()
                continue
            if head.missing:
                return
            self.exec_queue.popleft()
            self._start(head)

    def _start(self, execution: Execution) -> None:
        push = execution.push
        self.running += 1
        execution.started = True
        if push.spec.kind == p.TaskKind.NORMAL:
            self.normal_running += 1
        gpu_ids = self.actor_gpu_ids if push.spec.kind == p.TaskKind.ACTOR_TASK else push.gpu_ids
        self.cw.out.append(p.ExecuteTask(spec=push.spec, args=tuple(execution.blobs), gpu_ids=gpu_ids,
                                      node_id=self.cw.node_id))

    def on_executed(self, msg: p.TaskExecuted) -> None:
        execution = self.executions.pop(msg.task_id, None)
        if execution is None:
            return
        self.running -= 1
        if execution.push.spec.kind == p.TaskKind.NORMAL:
            self.normal_running -= 1
        self.reply(execution.push, msg.returns, msg.retryable_error, msg.cancelled)
        self.start_ready()
        self._maybe_terminate()

    def _maybe_terminate(self) -> None:
        """Out-of-scope termination waits for every call received before it."""
        if self.terminating and not self.executions:
            self.terminating = False
            self.cw.normal.return_idle()
            self.cw.send(p.CONTROL_PLANE, p.KillActor(actor_id=self.actor_id, no_restart=True,
                                                   reason="all handles to the actor went out of scope"))

    def reply(self, push: p.PushTask, blobs, retryable_error: bool = False, cancelled: bool = False) -> None:
        spec = push.spec
        returns = tuple(self._return_value(oid, blob, spec.owner) for oid, blob in zip(spec.return_ids, blobs))
        borrowed = tuple(self.cw.refs.unregistered_borrows())
        self.cw.send(push.reply_to, p.TaskReply(task_id=push.task_id, worker_id=self.cw.address, returns=returns,
                                             borrowed=borrowed, retryable_error=retryable_error,
                                             cancelled=cancelled))

    def _return_value(self, object_id: str, blob: p.Blob, owner: str) -> p.ReturnValue:
        for info in blob.contained:
            if info.owner == owner:
                continue
            if info.owner == self.cw.address:
                self.cw.refs.add_borrower(info.object_id, owner)
            else:
                self.cw.send(info.owner, p.AddBorrower(object_id=info.object_id, borrower=owner))
        if blob.nbytes > self.cw.config.inline_threshold and not blob.is_error:
            self.cw.send(self.cw.node_id, p.PutObject(object_id=object_id, owner=owner, blob=blob))
            return p.ReturnValue(object_id=object_id, node_id=self.cw.node_id, nbytes=blob.nbytes,
                                 contained=blob.contained)
        return p.ReturnValue(object_id=object_id, blob=blob, nbytes=blob.nbytes, contained=blob.contained)

    def on_cancel_task(self, msg: p.CancelTask) -> None:
        execution = self.executions.get(msg.task_id)
        if msg.recursive:
            for task in list(self.cw.tasks.values()):
                if task.spec.parent_task_id == msg.task_id:
                    self.cw.cancel_task(task, msg.force, recursive=True)
        if execution is None:
            return
        if execution.started:
            if msg.force:
                self.cw.out.append(p.ExitProcess(reason=f"task {msg.task_id} was cancelled with force=True"))
            else:
                self.cw.out.append(p.InterruptTask(task_id=msg.task_id))
            return
        del self.executions[msg.task_id]
        if msg.task_id in self.exec_queue:
            self.exec_queue.remove(msg.task_id)
        self.reply(execution.push, [], cancelled=True)
        self.start_ready()
        self._maybe_terminate()

    def on_arg_local(self, object_id: str, blob: p.Blob) -> None:
        for task_id in self.arg_pulls.pop(object_id, ()):
            execution = self.executions.get(task_id)
            if execution is not None:
                self.fill_arg(execution, object_id, blob)

    def on_arg_lost(self, object_id: str, error: p.Blob) -> None:
        for task_id in self.arg_pulls.pop(object_id, ()):
            execution = self.executions.pop(task_id, None)
            if execution is not None:
                self.reply(execution.push, [error] * len(execution.push.spec.return_ids))
        self.start_ready()
        self._maybe_terminate()
