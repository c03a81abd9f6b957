"""Simulated processes and the user-code threads inside them.

A ``SimProcess`` is one driver or worker process: a core worker plus what the process holds
for user code (its function cache, its actor instance, its asyncio loop). Each execution of
user code runs on a ``SimThread``, a greenlet whose parent is the hub (the greenlet running
the event loop). Only the hub switches into threads; a thread switches back to the hub when it
blocks (``get``, ``wait``, ``time.sleep``) or finishes. Around every switch the thread's
environment variables and random state are put in place and taken away again.

An async actor gets one loop thread running an asyncio event loop whose clock is virtual and
whose selector, when idle, parks the greenlet until a timer fires or new work arrives.
"""
from __future__ import annotations

import asyncio
import contextvars
import os
import selectors

import greenlet

from rayref._private import executor
from rayref.core import protocol as p
from rayref.core.core_worker import CoreWorker
from transports.base import RunningTask
from transports.sim import virtual

running_task: contextvars.ContextVar = contextvars.ContextVar("rayref_running_task", default=None)


class SimGreenlet(greenlet.greenlet):
    sim_thread = None


class SimThread:
    def __init__(self, process: SimProcess, target, task: RunningTask | None, env: dict | None, seed: int):
        self.process = process
        self.task = task
        self.env = env
        self.seed = seed
        self.random: virtual.RandomState | None = None
        self.saved_env: dict = {}
        self.interrupted = False
        self.token = 0
        self.target = target
        self.greenlet: SimGreenlet | None = None

    def resume(self) -> None:
        """Switch into this thread (from the hub) until it blocks or ends.

        The greenlet is made here, on the hub, so the hub is its parent: made inside another
        thread it would return there, and finished threads would pile up in a chain.
        """
        if self.greenlet is None:
            self.greenlet = SimGreenlet(self.target)
            self.greenlet.sim_thread = self
        if self.greenlet.dead:
            return
        self._enter()
        try:
            self.greenlet.switch()
        finally:
            self._leave()

    def kill(self) -> None:
        if self.greenlet is not None and self.greenlet and not self.greenlet.dead:
            self._enter()
            try:
                self.greenlet.throw(greenlet.GreenletExit)
            finally:
                self._leave()

    def _enter(self) -> None:
        if self.random is None:
            self.random = virtual.RandomState(self.seed)
        else:
            self.random.restore()
        if self.env:
            for key, value in self.env.items():
                self.saved_env[key] = os.environ.get(key)
                os.environ[key] = value

    def _leave(self) -> None:
        if not self.greenlet.dead:
            self.random.save()
        for key, old in self.saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self.saved_env = {}


class SimProcess:
    """A simulated driver or worker process; the ``ProcessContext`` of its user code."""

    def __init__(self, runtime, address: str, node_id: str, pid: int, *, is_driver: bool = False):
        self.runtime = runtime
        self.address = address
        self.node_id = node_id
        self.pid = pid
        self.cw = CoreWorker(address, node_id, runtime.config, is_driver=is_driver)
        self.is_driver = is_driver
        self.functions: dict = {}
        self.actor = None
        self.actor_resources: dict = {}
        self.actor_env: dict = {}
        self.loop_env: dict = {}
        self.actor_restarts = 0
        self.threads: list[SimThread] = []
        self.alive = True
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: SimThread | None = None
        self.loop_parked = 0
        self.async_waiters: dict = {}
        self.async_calls: dict[str, asyncio.Task | None] = {}  # None: scheduled, not yet begun

    @property
    def namespace(self) -> str:
        return self.runtime.namespace

    @property
    def job_id(self) -> str:
        return self.runtime.job_id

    @property
    def job_env(self) -> dict:
        return self.runtime.job_env

    # ------------------------------------------------------------------ ProcessContext

    def call(self, fn, *args):
        result = fn(*args)
        self.runtime.execute(self.address, self.cw.drain())
        return result

    def block(self, waiter) -> None:
        self.runtime.block(self, waiter)

    async def wait_async(self, infos) -> None:
        waiter = self.call(self.cw.begin_get, infos, None)
        if waiter.done:
            return
        if self.loop is None or self.runtime.current_thread() is not self.loop_thread:
            self.block(waiter)
            return
        future = self.loop.create_future()
        self.async_waiters[waiter] = future
        await future

    def current_task(self) -> RunningTask | None:
        task = running_task.get()
        if task is not None:
            return task
        thread = self.runtime.current_thread()
        return thread.task if thread is not None and thread.process is self else None

    def set_actor(self, instance) -> None:
        self.actor = instance
        spec = self.current_task().spec
        self.actor_resources = spec.resources.to_dict()
        self.actor_restarts = spec.attempt

    # ------------------------------------------------------------------ running user code

    def execute(self, cmd: p.ExecuteTask) -> None:
        spec = cmd.spec
        task = RunningTask(spec, cmd.gpu_ids)
        if spec.kind == p.TaskKind.ACTOR_TASK and self._is_coroutine(spec.method):
            self._run_on_loop(cmd, task)
            return
        thread = SimThread(self, lambda: self._run(cmd, task), task, self._environment(cmd),
                           virtual.task_seed(self.runtime.seed, spec.task_id, spec.attempt))
        self.threads.append(thread)
        self.runtime.soon(thread.resume)

    def _environment(self, cmd: p.ExecuteTask) -> dict | None:
        """The job's variables, then the task's (an actor call: the actor's), then its GPUs."""
        env = dict(self.runtime.job_env)
        if cmd.spec.kind == p.TaskKind.ACTOR_CREATION:
            self.actor_env = dict(cmd.spec.env_vars)
        env.update(self.actor_env if cmd.spec.kind == p.TaskKind.ACTOR_TASK else cmd.spec.env_vars)
        if cmd.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in cmd.gpu_ids)
        if cmd.spec.kind == p.TaskKind.ACTOR_CREATION:
            self.loop_env = env
        return env or None

    def _run(self, cmd: p.ExecuteTask, task: RunningTask) -> None:
        spec = cmd.spec
        result = None
        try:
            fn, args, kwargs = executor.bind(self, spec, cmd.args)
            result = fn(*args, **kwargs)
            outcome = executor.finished(spec, result)
        except virtual.ProcessExit as exit_:
            self.runtime.crash(self, f"the process called os._exit({exit_.code})")
            return
        except greenlet.GreenletExit:
            return
        except BaseException as error:  # noqa: BLE001 - every failure of user code is the task's result
            if self.interrupted_thread():
                error = KeyboardInterrupt()
            outcome = executor.failed(spec, error)
        finally:
            self.threads.remove(self.runtime.current_thread())
        if spec.kind == p.TaskKind.ACTOR_CREATION and spec.actor.is_async and not outcome.returns[0].is_error:
            self._start_loop()
        self.runtime.deliver_local(self.address, outcome)
        del result

    def interrupted_thread(self) -> bool:
        thread = self.runtime.current_thread()
        return thread is not None and thread.interrupted

    def interrupt(self, task_id: str) -> None:
        """A running call ends with KeyboardInterrupt: its thread's, or its coroutine's asyncio task
        is cancelled (as Ray cancels an async actor's call)."""
        if task_id in self.async_calls:  # its cancel runs on the loop after its _begin_async
            self.loop.call_soon(self._cancel_async, task_id)
            self.unpark_loop()
            return
        for thread in self.threads:
            if thread.task is not None and thread.task.spec.task_id == task_id:
                thread.interrupted = True
                self.runtime.interrupt(thread)

    def _is_coroutine(self, method: str) -> bool:
        return self.loop is not None and asyncio.iscoroutinefunction(
            getattr(type(self.actor), method, None))

    # ------------------------------------------------------------------ async actors

    def _start_loop(self) -> None:
        self.loop = VirtualLoop(self)
        self.loop_thread = SimThread(self, self.loop.run_forever, None, self.loop_env or None,
                                     virtual.task_seed(self.runtime.seed, self.address, 0))
        self.threads.append(self.loop_thread)
        self.runtime.soon(self.loop_thread.resume)

    def _run_on_loop(self, cmd: p.ExecuteTask, task: RunningTask) -> None:
        self.async_calls[cmd.spec.task_id] = None
        self.loop.call_soon(self._begin_async, cmd, task)
        self.unpark_loop()

    def _begin_async(self, cmd: p.ExecuteTask, task: RunningTask) -> None:
        """The call's asyncio task (cancelled before its first step, it never runs the coroutine:
        its outcome is made when it is done)."""
        call = self.async_calls[cmd.spec.task_id] = self.loop.create_task(self._run_async(cmd, task))
        call.add_done_callback(lambda done: done.cancelled() and self._deliver_async(
            cmd.spec.task_id, executor.failed(cmd.spec, KeyboardInterrupt())))

    def _cancel_async(self, task_id: str) -> None:
        call = self.async_calls.get(task_id)  # gone if the call ended first
        if call is not None:
            call.cancel()

    def _deliver_async(self, task_id: str, outcome: p.TaskExecuted) -> None:
        self.async_calls.pop(task_id, None)
        self.runtime.deliver_local(self.address, outcome)

    async def _run_async(self, cmd: p.ExecuteTask, task: RunningTask) -> None:
        running_task.set(task)
        spec = cmd.spec
        try:
            fn, args, kwargs = executor.bind(self, spec, cmd.args)
            outcome = executor.finished(spec, await fn(*args, **kwargs))
        except asyncio.CancelledError:
            outcome = executor.failed(spec, KeyboardInterrupt())
        except virtual.ProcessExit as exit_:
            self.runtime.crash(self, f"the process called os._exit({exit_.code})")
            return
        except Exception as error:  # noqa: BLE001
            outcome = executor.failed(spec, error)
        self._deliver_async(spec.task_id, outcome)

    def unpark_loop(self) -> None:
        if self.loop_parked:
            self.loop_parked += 1
            self.runtime.soon(self._resume_loop, self.loop_parked)

    def _resume_loop(self, token: int) -> None:
        if self.loop_parked == token:
            self.loop_parked = 0
            self.loop_thread.resume()

    def park_loop(self, timeout: float | None) -> None:
        """The loop has nothing to do for ``timeout`` virtual seconds (None: until woken)."""
        if timeout is not None and timeout <= 0:
            return
        self.loop_parked = 1
        if timeout is not None:
            self.runtime.later(timeout, self._resume_loop, 1)
        asyncio.events._set_running_loop(None)
        self.loop_thread.greenlet.parent.switch()
        asyncio.events._set_running_loop(self.loop)

    def wake_async(self, waiter) -> bool:
        future = self.async_waiters.pop(waiter, None)
        if future is None:
            return False
        self.loop.call_soon(lambda: future.done() or future.set_result(None))
        self.unpark_loop()
        return True

    def close(self) -> None:
        self.alive = False
        for thread in list(self.threads):
            thread.kill()
        self.threads.clear()
        if self.loop is not None:
            try:
                self.loop.close()
            except Exception:  # noqa: BLE001 - a loop killed mid-run may refuse; its process is gone anyway
                pass


class _ParkingSelector(selectors.BaseSelector):
    def __init__(self, process: SimProcess):
        self.process = process
        self.keys: dict = {}

    def register(self, fileobj, events, data=None):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self.keys[fd] = key
        return key

    def unregister(self, fileobj):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self.keys.pop(fd)

    def select(self, timeout=None):
        self.process.park_loop(timeout)
        return []

    def get_map(self):
        return self.keys

    def close(self):
        self.keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on the virtual clock, idling by parking its greenlet."""

    def __init__(self, process: SimProcess):
        super().__init__(_ParkingSelector(process))
        self._process = process

    def time(self) -> float:
        return self._process.runtime.env.now
