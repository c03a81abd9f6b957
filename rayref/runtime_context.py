"""``get_runtime_context()``: who and where the calling code is."""
from __future__ import annotations

from rayref._private import worker


class RuntimeContext:
    def __init__(self, ctx):
        self._ctx = ctx

    def get_node_id(self) -> str:
        return self._ctx.cw.node_id

    def get_worker_id(self) -> str:
        return self._ctx.cw.address

    def get_job_id(self) -> str:
        return self._ctx.job_id

    def get_task_id(self) -> str | None:
        task = self._ctx.current_task()
        return task.spec.task_id if task is not None else None

    def get_actor_id(self) -> str | None:
        return self._ctx.cw.receiver.actor_id or None

    def get_assigned_resources(self) -> dict:
        """The resources this task holds; in an actor, those the actor was created with."""
        if self._ctx.actor is not None:
            return dict(self._ctx.actor_resources)
        task = self._ctx.current_task()
        return task.spec.resources.to_dict() if task is not None else {}

    def get_accelerator_ids(self) -> dict:
        task = self._ctx.current_task()
        return {"GPU": [str(i) for i in task.gpu_ids] if task is not None else []}

    @property
    def namespace(self) -> str:
        return self._ctx.namespace

    def get_namespace(self) -> str:
        return self._ctx.namespace

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return self._ctx.actor_restarts > 0


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(worker.current())
