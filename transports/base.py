"""The transport contract: what the public API needs from whatever drives the engine.

A transport hosts engines (core workers, node managers, the control plane), carries their
messages, runs their commands, and runs user code. The API sees it through two objects:

``Transport``
    ``current()`` the ``ProcessContext`` of the code running now; ``shutdown()``;
    ``context_info()`` a dict describing the connection (returned by ``init``).

``ProcessContext`` (one per driver or worker process)
    ``cw``: the process's ``CoreWorker``. ``call(fn, *args)``: call an engine method of this
    process and carry out the commands it produced. ``block(waiter)``: block the calling user
    thread until the waiter is done. ``wait_async(infos)``: the same, awaitable.
    ``current_task()``: the ``RunningTask`` of the calling code, or None in a driver.
    ``functions``: the process's cache of unpickled functions. ``set_actor(instance)``,
    ``actor``: the actor instance this process hosts, ``actor_resources`` what it was created
    with. ``namespace``, ``job_id``, ``job_env`` (the driver's runtime_env variables, which new
    tasks inherit), ``actor_restarts``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rayref.core.protocol import TaskSpec


@dataclass(frozen=True, slots=True)
class RunningTask:
    spec: TaskSpec
    gpu_ids: tuple[int, ...] = ()


class ProcessContext(Protocol):
    cw: Any
    namespace: str
    job_id: str
    job_env: dict
    functions: dict
    actor: Any
    actor_resources: dict
    actor_restarts: int

    def call(self, fn, *args): ...
    def block(self, waiter) -> None: ...
    async def wait_async(self, infos) -> None: ...
    def current_task(self) -> RunningTask | None: ...
    def set_actor(self, instance) -> None: ...


class Transport(Protocol):
    def current(self) -> ProcessContext: ...
    def shutdown(self) -> None: ...
    def context_info(self) -> dict: ...
