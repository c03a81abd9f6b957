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
import queue
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

PROCESS_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()
"""The CPUs this process may run on, as it started: user code's threads keep all of them."""


def keep_engine_threads_together() -> None:
    """Pin this process's engine threads, the calling asyncio loop thread and gRPC's poller
    thread, to the CPU the loop runs on now.

    Every envelope crosses between the two, and a call crosses between them and a user thread
    twice more. A thread woken on the other CPU is slow to wake in a virtual machine, and the
    kernel often picks the other CPU: keeping the pair on one CPU made sync actor calls about
    15 % faster on a 2-CPU machine (README). Threads that run user code are not pinned
    (``release_cpus``). ``RAYREF_PIN_ENGINE_THREADS=0`` turns this off.
    """
    if len(PROCESS_CPUS) < 2 or os.environ.get("RAYREF_PIN_ENGINE_THREADS", "1") == "0":
        return
    cpu = _current_cpu()
    if cpu not in PROCESS_CPUS:
        return
    pollers = [t.native_id for t in threading.enumerate() if "_poll_wrapper" in t.name]  # gRPC's aio poller
    for tid in [threading.get_native_id(), *pollers]:
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:  # not allowed here (a container's policy): run unpinned
            return


def release_cpus() -> None:
    """Let the calling thread (one that runs user code) run on all of the process's CPUs; a thread
    starts with its creator's, and an engine thread's are one CPU."""
    if PROCESS_CPUS and os.sched_getaffinity(0) != PROCESS_CPUS:
        os.sched_setaffinity(0, PROCESS_CPUS)


def _current_cpu() -> int:
    """The CPU the calling thread runs on (field 39 of its ``stat``), or -1 if unknown."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


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
        self.direct: dict[str, wire.Outbox] = {}
        self.via_node: set[str] = set()
        self.runners = Runners(self)

    # ------------------------------------------------------------------ the loop side

    async def attach(self) -> None:
        """Serve ``Send`` for peers of this node, then open the stream to the node."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.closing = asyncio.Event()
        self.server = grpc.aio.server(options=wire.OPTIONS)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, {
            "Send": grpc.stream_unary_rpc_method_handler(
                self.receive, request_deserializer=wire.identity, response_serializer=wire.identity)}),))
        self.server.add_insecure_port(wire.local_endpoint(self.token, self.address))
        await self.server.start()
        self.to_node = wire.Outbox(self._flush)
        self.to_node.put(wire.encode(self.address, "", "attach"))
        self.channel = wire.channel(self.endpoint)
        info = self.channel.unary_unary(wire.INFO, request_serializer=wire.identity, response_deserializer=wire.identity)
        call = self.channel.stream_stream(wire.ATTACH, request_serializer=wire.identity,
                                          response_deserializer=wire.identity)
        try:
            await info(b"", metadata=wire.metadata(self.token))  # a refused stream can lose its reason in a race
            self.stream = call(self.to_node.batches(), metadata=wire.metadata(self.token))
            await self.stream.read()
        except grpc.aio.AioRpcError as error:
            self.to_node.close()
            await self.server.stop(0)
            raise ConnectionError(f"The rayref node at {self.endpoint} refused this process: "
                                  f"{error.details() or error.code().name}") from None
        self.reader = asyncio.ensure_future(self._read())
        keep_engine_threads_together()

    async def _read(self) -> None:
        try:
            while (data := await self.stream.read()) is not grpc.aio.EOF:
                self.on_messages(wire.unpack(data))
        except Exception as error:  # noqa: BLE001 - the node went away or refused us; we are detached
            self.detach_error = error
        finally:
            self.detached.set()

    async def receive(self, request_iterator, context):
        """A peer process of this node streams envelopes straight to this one."""
        if not wire.authorized(context, self.token):
            return b""
        await wire.read_until(self.closing, request_iterator, lambda data: self.on_messages(wire.unpack(data)))
        return b""

    def on_messages(self, envelopes) -> None:
        with self.lock:
            for _, _, msg in envelopes:
                self.dispatch(self.cw.handle(msg, time.monotonic()))

    def on_message(self, msg: p.Message) -> None:
        with self.lock:
            self.dispatch(self.cw.handle(msg, time.monotonic()))

    def _executed(self, outcome: p.TaskExecuted) -> None:
        """A task's outcome: its large returns are copied once, into shared memory, as the
        engine's ``PutObject`` is encoded (``executor.finished(defer_large=True)``)."""
        self.on_message(outcome)
        executor.settled(outcome)

    def dispatch(self, commands) -> None:
        for cmd in commands:
            kind = type(cmd)
            if kind is p.Send:
                self._post(cmd.to, wire.encode(self.address, cmd.to, cmd.msg))
            elif kind is p.Wake:
                self._event(cmd.waiter).set()
            elif kind is p.ExecuteTask:
                self._start(cmd)
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

    def _event(self, waiter) -> Signal:
        """The event a user thread blocked on ``waiter`` waits for (made by whichever comes first,
        the ``Wake`` or the wait). Under the lock."""
        event = self.events.get(waiter)
        if event is None:
            event = self.events[waiter] = Signal()
        return event

    def _in_loop(self, fn, *args) -> None:
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _post(self, to: str, envelope: bytes) -> None:
        """Queue an envelope in dispatch order, whichever thread dispatched it."""
        self.pending.append((to, envelope))
        if threading.get_ident() == self.loop_thread:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """Hand envelopes to their streams in dispatch order, across the node's stream too: an
        envelope for the node goes only when every earlier one to a peer has been written, and
        one for a peer only when every earlier one for the node has. So what this process sent
        before a message to its node (a reply, then a request to end the actor) leaves before
        it, and the other way round, as when every envelope went through the node. Streams to
        two peers do not wait for each other (a caller alternating between actors would
        otherwise send one envelope per gRPC message)."""
        self.flush_scheduled = False
        while self.pending:
            to, envelope = self.pending[0]
            outbox = self._outbox(to)
            if outbox is self.to_node:
                if any(peer.unwritten for peer in self.direct.values()):
                    return
            elif self.to_node.unwritten:
                return
            self.pending.popleft()
            outbox.put(envelope)

    def _outbox(self, to: str) -> wire.Outbox:
        """A process of this node gets its envelopes directly; everyone else through the node."""
        outbox = self.direct.get(to)
        if outbox is not None:
            return outbox
        if "." not in to or to.split(".", 1)[0] != self.cw.node_id or to in self.via_node:
            return self.to_node
        outbox = self.direct[to] = wire.Outbox(self._flush)
        asyncio.ensure_future(self._stream_direct(to, outbox))
        return outbox

    async def _stream_direct(self, to: str, outbox: wire.Outbox) -> None:
        """Stream to a peer's socket; if it cannot be reached, its envelopes (these and later
        ones, in order) go through the node, which delivers them or answers PeerUnreachable."""
        channel = wire.channel(wire.local_endpoint(self.token, to))
        try:
            state = channel.get_state(try_to_connect=True)
            while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
                await channel.wait_for_state_change(state)
                state = channel.get_state()
            if state is grpc.ChannelConnectivity.READY:
                send = channel.stream_unary(wire.SEND, request_serializer=wire.identity,
                                            response_deserializer=wire.identity)
                await send(outbox.batches(), metadata=wire.metadata(self.token))
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self.via_node.add(to)
            self.direct.pop(to, None)
            for envelope in outbox.take():
                self.to_node.put(envelope)
            outbox.close()  # gRPC's task still reading the generator ends, rather than being destroyed pending
            self._flush()
            await asyncio.sleep(0)
            await channel.close()

    def wait_written(self, timeout: float) -> None:
        """Block (not on the loop thread) until what this process sent its node has been written,
        at most ``timeout`` seconds, or until it detached."""
        deadline = time.monotonic() + timeout
        while (self.pending or self.to_node.unwritten) and time.monotonic() < deadline and not self.detached.is_set():
            time.sleep(0.001)

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
            event = self._event(waiter)
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

    def _start(self, cmd: p.ExecuteTask) -> None:
        """A coroutine method runs on the actor's event loop; anything else on a thread of the pool."""
        spec = cmd.spec
        if spec.kind == p.TaskKind.ACTOR_TASK and self._is_coroutine(spec.method):
            run = self.task_threads[spec.task_id] = AsyncRun(self.actor_loop)
            self.actor_loop.call_soon_threadsafe(self._begin_async, run, cmd)
        else:
            self.runners.start(cmd)

    def _run(self, cmd: p.ExecuteTask) -> p.TaskExecuted:
        spec = cmd.spec
        devices = self._devices(cmd.gpu_ids)
        self.local.task = RunningTask(spec, tuple(int(d) if d.isdigit() else d for d in devices))
        self.task_threads[spec.task_id] = threading.get_ident()
        self._environment(cmd)
        outcome = self._outcome(cmd)
        with self.lock:  # no cancellation is sent to this thread after this (InterruptTask runs under the lock)
            self.task_threads.pop(spec.task_id, None)
        if spec.kind == p.TaskKind.ACTOR_CREATION and spec.actor.is_async and not outcome.returns[0].is_error:
            self._start_actor_loop()
        return outcome

    def _outcome(self, cmd: p.ExecuteTask) -> p.TaskExecuted:
        spec = cmd.spec
        try:
            fn, args, kwargs = executor.bind(self, spec, cmd.args)
            return executor.finished(spec, fn(*args, **kwargs), defer_large=True)
        except BaseException as error:  # noqa: BLE001 - every failure of user code is the task's result
            return executor.failed(spec, error)

    def _begin_async(self, run: AsyncRun, cmd: p.ExecuteTask) -> None:
        """On the actor's loop: the call's asyncio task. Its outcome is handled as the coroutine
        ends; a task cancelled before its first step never runs the coroutine, so its outcome
        is made when the task is done."""
        run.task = self.actor_loop.create_task(self._run_async(cmd))
        run.task.add_done_callback(lambda task: task.cancelled() and self._cancelled_before_start(cmd))

    def _cancelled_before_start(self, cmd: p.ExecuteTask) -> None:
        self.task_threads.pop(cmd.spec.task_id, None)
        self._executed(executor.failed(cmd.spec, KeyboardInterrupt()))

    async def _run_async(self, cmd: p.ExecuteTask) -> None:
        spec = cmd.spec
        self.local.task = RunningTask(spec, tuple(int(d) if d.isdigit() else d for d in self._devices(cmd.gpu_ids)))
        try:
            fn, args, kwargs = executor.bind(self, spec, cmd.args)
            outcome = executor.finished(spec, await fn(*args, **kwargs), defer_large=True)
        except asyncio.CancelledError:
            outcome = executor.failed(spec, KeyboardInterrupt())
        except BaseException as error:  # noqa: BLE001
            outcome = executor.failed(spec, error)
        self.task_threads.pop(spec.task_id, None)
        self._executed(outcome)

    def _is_coroutine(self, method: str) -> bool:
        return self.actor_loop is not None and asyncio.iscoroutinefunction(getattr(type(self.actor), method, None))

    def _start_actor_loop(self) -> None:
        loop = asyncio.new_event_loop()

        def run() -> None:
            release_cpus()
            loop.run_forever()
        threading.Thread(target=run, daemon=True).start()
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
        running = self.task_threads.get(task_id)
        if isinstance(running, AsyncRun):
            running.cancel()
        elif running is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(running), ctypes.py_object(KeyboardInterrupt))


class Signal:
    """A one-shot event: set once (under the host's lock), waited on by one thread. A bare lock
    held from the start and released by ``set``: a fifth of a ``threading.Event``'s cost (which
    allocates a lock for every wait and wakes its waiter through a condition)."""

    __slots__ = ("lock", "is_set")

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            self.lock.release()

    def wait(self, timeout: float) -> bool:
        if self.lock.acquire(timeout=timeout):
            self.lock.release()  # set stays set
            return True
        return False


class AsyncRun:
    """An async actor's call on the actor's event loop, cancellable from any thread (Ray cancels
    a running coroutine method by cancelling its asyncio task). Its cancel reaches the loop after
    its ``_begin_async`` (both go by ``call_soon_threadsafe``, in dispatch order), so the task is
    there by then."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.task: asyncio.Task | None = None

    def cancel(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.task.cancel())


class Runners:
    """Threads that run tasks, reused: a thread is idle again before its task's outcome is handled,
    so the next task (often dispatched by that very outcome) runs on it."""

    def __init__(self, host: ProcessHost):
        self.host = host
        self.idle: list[queue.SimpleQueue] = []

    def start(self, cmd: p.ExecuteTask) -> None:
        try:
            inbox = self.idle.pop()
        except IndexError:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="rayref-task", daemon=True).start()
        inbox.put(cmd)

    def _serve(self, inbox: queue.SimpleQueue) -> None:
        release_cpus()
        while True:
            cmd = inbox.get()
            try:
                outcome = self.host._run(cmd)
            except KeyboardInterrupt:  # the cancellation arrived as the task finished
                self.host.task_threads.pop(cmd.spec.task_id, None)
                outcome = executor.failed(cmd.spec, KeyboardInterrupt())
            self.idle.append(inbox)
            self.host._executed(outcome)
