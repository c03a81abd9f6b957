"""A worker or driver process on the gRPC transport: its core worker, attached to its node.

The asyncio loop thread carries envelopes to and from the node; user code runs on other
threads (the driver's main thread; one thread per running task in a worker; an asyncio loop
thread for an async actor). The core worker is guarded by one lock: whoever calls into it (a
message on the loop thread, an API call on a user thread) holds the lock while it runs and
while its commands are carried out. A blocked user thread waits on an event that the engine's
``Wake`` sets.
"""
from __future__ import annotations

import asyncio
import ctypes
from collections import deque
import logging
import os
import threading
import time

import grpc

from rayref._private import executor
from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.core_worker import CoreWorker
from transports.base import RunningTask
from transports.grpc import wire

log = logging.getLogger("rayref.worker")


class ProcessHost:
    def __init__(self, address: str, node_id: str, endpoint: str, token: str, *, is_driver: bool,
                 config: EngineConfig | None = None, namespace: str = "", job_env: dict | None = None):
        self.address = address
        self.endpoint = endpoint
        self.token = token
        self.cw = CoreWorker(address, node_id, config or EngineConfig(), is_driver=is_driver)
        self.lock = threading.RLock()
        self.events: dict = {}
        self.functions: dict = {}
        self.actor = None
        self.actor_resources: dict = {}
        self.actor_restarts = 0
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self._namespace = namespace
        self.job_id = "job-01"
        self.job_env = dict(job_env or {})
        self.local = threading.local()
        self.task_threads: dict[str, int] = {}
        self.detached = threading.Event()
        self.pending: deque = deque()
        self.gpu_devices = [d for d in os.environ.get("RAYREF_NODE_GPUS", "").split(",") if d]
        self.flush_scheduled = False

    # ------------------------------------------------------------------ the loop side

    async def attach(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.channel = wire.channel(self.endpoint)
        call = self.channel.stream_stream(wire.ATTACH, request_serializer=wire.identity,
                                          response_deserializer=wire.identity)

        async def outgoing():
            yield wire.encode(self.address, "", "attach")
            while True:
                yield await self.outbox.get()

        self.stream = call(outgoing(), metadata=wire.metadata(self.token))
        try:
            await self.stream.read()
        except grpc.aio.AioRpcError as error:
            raise ConnectionError(f"The rayref node at {self.endpoint} refused this process: "
                                  f"{error.details() or error.code().name}") from None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while (data := await self.stream.read()) is not grpc.aio.EOF:
                _, _, msg = wire.decode(data)
                self.on_message(msg)
        except Exception as error:  # noqa: BLE001 - the node went away or refused us; we are detached
            self.detach_error = error
        finally:
            self.detached.set()

    def on_message(self, msg: p.Message) -> None:
        with self.lock:
            self.dispatch(self.cw.handle(msg, time.monotonic()))

    def dispatch(self, commands) -> None:
        for cmd in commands:
            kind = type(cmd)
            if kind is p.Send:
                self._post(wire.encode(self.address, cmd.to, cmd.msg))
            elif kind is p.Wake:
                self.events.setdefault(cmd.waiter, threading.Event()).set()
            elif kind is p.ExecuteTask:
                threading.Thread(target=self._run, args=(cmd,), daemon=True).start()
            elif kind is p.StartTimer:
                self._in_loop(self.loop.call_later, cmd.delay, self.on_message, p.TimerFired(key=cmd.key))
            elif kind is p.InterruptTask:
                self._interrupt(cmd.task_id)
            elif kind is p.ExitProcess:
                os._exit(1)
            elif kind is p.Log:
                log.warning(cmd.text)
            else:
                raise TypeError(f"unknown command {cmd!r}")

    def _in_loop(self, fn, *args) -> None:
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _post(self, data: bytes) -> None:
        """Queue an envelope in dispatch order, whichever thread dispatched it (FIFO1)."""
        self.pending.append(data)
        if threading.get_ident() == self.loop_thread:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        while self.pending:
            self.outbox.put_nowait(self.pending.popleft())

    # ------------------------------------------------------------------ ProcessContext

    def call(self, fn, *args):
        with self.lock:
            result = fn(*args)
            self.dispatch(self.cw.drain())
            return result

    def block(self, waiter) -> None:
        with self.lock:
            if waiter.done:
                return
            event = self.events.setdefault(waiter, threading.Event())
        try:
            while not event.wait(0.05):
                if self.detached.is_set():
                    raise ConnectionError(f"rayref: this process lost its connection to its node at "
                                          f"{self.endpoint}: {getattr(self, 'detach_error', 'the stream ended')}")
        except KeyboardInterrupt:
            self.call(self.cw.abandon, waiter)
            raise
        finally:
            with self.lock:
                self.events.pop(waiter, None)

    async def wait_async(self, infos) -> None:
        waiter = self.call(self.cw.begin_get, infos, None)
        if not waiter.done:
            await asyncio.get_running_loop().run_in_executor(None, self.block, waiter)

    def current_task(self) -> RunningTask | None:
        return getattr(self.local, "task", None)

    @property
    def namespace(self) -> str:
        """The driver's own; in a worker, the job's, as carried by the task running here."""
        task = self.current_task()
        return task.spec.namespace if task is not None and task.spec.namespace else self._namespace

    def set_actor(self, instance) -> None:
        spec = self.current_task().spec
        self.actor = instance
        self.actor_resources = spec.resources.to_dict()
        self.actor_restarts = spec.attempt

    # ------------------------------------------------------------------ running user code

    def _devices(self, gpu_ids) -> list[str]:
        """The node's device ids for the engine's GPU indices (CUDA_VISIBLE_DEVICES of the node)."""
        return [self.gpu_devices[i] if i < len(self.gpu_devices) else str(i) for i in gpu_ids]

    def _run(self, cmd: p.ExecuteTask) -> None:
        spec = cmd.spec
        devices = self._devices(cmd.gpu_ids)
        self.local.task = RunningTask(spec, tuple(int(d) if d.isdigit() else d for d in devices))
        self.task_threads[spec.task_id] = threading.get_ident()
        self._environment(cmd)
        if spec.kind == p.TaskKind.ACTOR_TASK and self._is_coroutine(spec.method):
            future = asyncio.run_coroutine_threadsafe(self._run_async(cmd), self.actor_loop)
            outcome = future.result()
        else:
            outcome = self._outcome(cmd)
        self.task_threads.pop(spec.task_id, None)
        if spec.kind == p.TaskKind.ACTOR_CREATION and spec.actor.is_async and not outcome.returns[0].is_error:
            self._start_actor_loop()
        self.on_message(outcome)

    def _outcome(self, cmd: p.ExecuteTask) -> p.TaskExecuted:
        spec = cmd.spec
        try:
            fn, args, kwargs = executor.bind(self, spec, cmd.args)
            return executor.finished(spec, fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - every failure of user code is the task's result
            return executor.failed(spec, error)

    async def _run_async(self, cmd: p.ExecuteTask) -> p.TaskExecuted:
        spec = cmd.spec
        self.local.task = RunningTask(spec, tuple(int(d) if d.isdigit() else d for d in self._devices(cmd.gpu_ids)))
        try:
            fn, args, kwargs = executor.bind(self, spec, cmd.args)
            return executor.finished(spec, await fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001
            return executor.failed(spec, error)

    def _is_coroutine(self, method: str) -> bool:
        return self.actor_loop is not None and asyncio.iscoroutinefunction(getattr(type(self.actor), method, None))

    def _start_actor_loop(self) -> None:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        self.actor_loop = loop

    def _environment(self, cmd: p.ExecuteTask) -> None:
        """A worker runs one task at a time (an actor: its own), so the process environment is the task's."""
        spec = cmd.spec
        if spec.kind == p.TaskKind.ACTOR_TASK:
            return
        for key in getattr(self, "_task_env", ()):
            os.environ.pop(key, None)
        env = dict(spec.env_vars)
        if cmd.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self._devices(cmd.gpu_ids))
        os.environ.update(env)
        self._task_env = tuple(env)

    def _interrupt(self, task_id: str) -> None:
        ident = self.task_threads.get(task_id)
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
