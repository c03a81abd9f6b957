"""The SimPy transport: every engine of a cluster in one process, in virtual time.

The runtime hosts the control plane, one node manager per node and one core worker per
simulated process, all addressed by string. It carries messages over the network model
(latency + bytes/bandwidth, FIFO per sender/receiver pair), fires timers, starts and kills
simulated processes, and runs user code on greenlets. Its dispatch over commands is the
short, boring ``execute``.

The driver is a simulated process too, but its code runs on the real main greenlet: when it
blocks (``get``, ``wait``, ``time.sleep``) it runs the event loop itself until what it waits
for happens. Should the event queue drain while it waits, every node manager and the control
plane are told the cluster is quiescent (infeasible requests then fail); if that changes
nothing, ``NoProgressError`` says what the driver was waiting for.

A killed node (``kill_node``) stops at once: its engines are gone and messages to its
addresses are dropped until the failure detector (this runtime, after
``node_death_detection_s``) delivers ``NodeDied`` to the control plane; from then on they
bounce as ``PeerUnreachable``, as for any gone process.

Every delivered message that counts (``Message.traced``) goes into the trace digest:
virtual time, sender, receiver, type and key. Same program and seed, same digest.
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading

import greenlet
import simpy

from rayref import exceptions
from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.control_plane import ControlPlane
from rayref.core.node_manager import NodeManager
from rayref.core.resources import Resources
from transports.sim import virtual
from transports.sim.process import SimProcess

log = logging.getLogger("rayref.sim")
INF = float("inf")


class Trace:
    def __init__(self, keep: bool = False):
        self.hash = hashlib.blake2b(digest_size=16)
        self.count = 0
        self.events: list | None = [] if keep else None

    def record(self, now: float, src: str, dst: str, msg: p.Message) -> None:
        if not msg.traced:
            return
        line = f"{now:.9f}|{src}|{dst}|{type(msg).__name__}|{msg.key()}"
        self.hash.update(line.encode())
        self.count += 1
        if self.events is not None:
            self.events.append(line)

    def digest(self) -> str:
        return self.hash.hexdigest()


def payload_bytes(msg: p.Message) -> int:
    kind = type(msg)
    if kind in (p.ObjectTransfer, p.ObjectLocal, p.PutObject, p.ObjectStatus):
        return msg.blob.nbytes if msg.blob is not None else 0
    if kind is p.PushTask:
        return _spec_bytes(msg.spec) + sum(a.blob.nbytes for a in msg.args if a.blob is not None)
    if kind is p.RegisterActor:
        return _spec_bytes(msg.spec) + sum(a.blob.nbytes for a in msg.args if a.blob is not None)
    if kind is p.TaskReply:
        return sum(r.blob.nbytes for r in msg.returns if r.blob is not None)
    return 0


def _spec_bytes(spec: p.TaskSpec) -> int:
    """A spec costs its arguments and the function's descriptor. Not the function's pickle: Ray
    ships a definition once, through the GCS, not with every task; and a by-value pickle
    carries its file's path, which would make virtual times depend on where a script lives."""
    return spec.args.nbytes + len(spec.function_id)


class SimRuntime:
    def __init__(self, seed: int, config: EngineConfig, network, *, worker_start_delay: float,
                 validate: bool = False, keep_trace: bool = False, node_death_detection_s: float = 15.0):
        self.seed = seed
        self.config = config
        self.network = network
        self.worker_start_delay = worker_start_delay
        self.node_death_detection_s = node_death_detection_s
        self.silent_nodes: dict[str, None] = {}
        self.validate = validate
        self.env = simpy.Environment()
        self.rng = random.Random(seed)
        self.trace = Trace(keep_trace)
        self.engines: dict = {}
        self.node_of: dict[str, str] = {}
        self.processes: dict[str, SimProcess] = {}
        self.node_managers: dict[str, NodeManager] = {}
        self.fifo: dict[tuple[str, str], float] = {}
        self.waiting: dict = {}
        self.warnings: list[str] = []
        self.pid_seq = 1000
        self.steps = 0
        self.quiescent_at = -1
        self.driver: SimProcess | None = None
        self.thread_ident = threading.get_ident()
        self.namespace = ""
        self.job_id = "job-01"
        self.job_env: dict = {}
        self.control_plane = ControlPlane(config, self.rng)
        self.engines[p.CONTROL_PLANE] = self.control_plane

    # ------------------------------------------------------------------ building the world

    def add_node(self, node_id: str, total: Resources, object_store_memory: int, is_head: bool,
                 labels: tuple = (), address: str = "") -> NodeManager:
        if not self.node_managers:
            self.node_of[p.CONTROL_PLANE] = node_id
        nm = NodeManager(node_id=node_id, total=total, config=self.config, rng=self.rng,
                         object_store_memory=object_store_memory, is_head=is_head, labels=labels,
                         address=address)
        self.node_managers[node_id] = nm
        self.engines[node_id] = nm
        self.node_of[node_id] = node_id
        self.execute(node_id, nm.start())
        return nm

    def connect_driver(self, namespace: str, job_env: dict) -> SimProcess:
        head = next(iter(self.node_managers))
        self.namespace, self.job_env = namespace, dict(job_env)
        self.driver = self._new_process(f"{head}.driver", head, is_driver=True)
        virtual.activate(self)
        return self.driver

    def _new_process(self, address: str, node_id: str, is_driver: bool = False) -> SimProcess:
        self.pid_seq += 1
        process = SimProcess(self, address, node_id, self.pid_seq, is_driver=is_driver)
        self.processes[address] = process
        self.engines[address] = process.cw
        self.node_of[address] = node_id
        return process

    # ------------------------------------------------------------------ scheduling callbacks

    def later(self, delay: float, fn, *args) -> None:
        event = self.env.timeout(delay)
        event.callbacks.append(lambda _event: fn(*args))

    def soon(self, fn, *args) -> None:
        self.later(0, fn, *args)

    # ------------------------------------------------------------------ messages and commands

    def send(self, src: str, to: str, msg: p.Message) -> None:
        dst_node = self.node_of.get(to)
        if dst_node in self.silent_nodes:
            return
        if dst_node is None or to not in self.engines:
            self._unreachable(src, to, msg)
            return
        delay = self.network.delay(self.node_of.get(src, dst_node), dst_node, payload_bytes(msg))
        at = self.env.now + delay
        pair = (src, to)
        last = self.fifo.get(pair, 0.0)
        if at < last:
            at = last
        self.fifo[pair] = at
        self.later(at - self.env.now, self.deliver, src, to, msg)

    def _unreachable(self, src: str, to: str, msg: p.Message) -> None:
        if src in self.engines and not isinstance(msg, p.PeerUnreachable):
            self.later(self.network.local_latency, self.deliver, to, src, p.PeerUnreachable(to=to, original=msg))

    def deliver(self, src: str, to: str, msg: p.Message) -> None:
        engine = self.engines.get(to)
        if engine is None:
            if self.node_of.get(to) not in self.silent_nodes:
                self._unreachable(src, to, msg)
            return
        self.steps += 1
        self.trace.record(self.env.now, src, to, msg)
        self.execute(to, engine.handle(msg, self.env.now))
        if self.validate:
            engine.validate()

    def deliver_local(self, address: str, msg: p.Message) -> None:
        """A process's own event (its user code finished) into its core worker, right away."""
        if address in self.engines:
            self.deliver(address, address, msg)

    def execute(self, address: str, commands) -> None:
        for cmd in commands:
            kind = type(cmd)
            if kind is p.Send:
                self.send(address, cmd.to, cmd.msg)
            elif kind is p.Wake:
                self.soon(self._wake, address, cmd.waiter)
            elif kind is p.ExecuteTask:
                self.processes[address].execute(cmd)
            elif kind is p.StartTimer:
                self.later(cmd.delay, self._fire, address, p.TimerFired(key=cmd.key))
            elif kind is p.StartWorker:
                self.later(self.worker_start_delay, self._start_worker, cmd.worker_id, cmd.node_id)
            elif kind is p.KillWorker:
                self.soon(self._kill, cmd.worker_id, cmd.reason)
            elif kind is p.ExitProcess:
                self.crash(self.processes[address], cmd.reason)
            elif kind is p.InterruptTask:
                self.processes[address].interrupt(cmd.task_id)
            elif kind is p.Log:
                self.warnings.append(cmd.text)
                log.warning(cmd.text)
            elif kind is p.SpillObject:
                pass  # the node's store already counts it as spilled; the sim models no disk
            else:
                raise TypeError(f"unknown command {cmd!r}")

    def _fire(self, address: str, msg: p.TimerFired) -> None:
        engine = self.engines.get(address)
        if engine is not None:
            self.execute(address, engine.handle(msg, self.env.now))

    # ------------------------------------------------------------------ processes

    def _start_worker(self, worker_id: str, node_id: str) -> None:
        if node_id not in self.engines:
            return
        self._new_process(worker_id, node_id)
        self.send(worker_id, node_id, p.WorkerRegistered(worker_id=worker_id, node_id=node_id))

    def crash(self, process: SimProcess, reason: str) -> None:
        if process.alive:
            process.alive = False
            self.soon(self._kill, process.address, reason)

    def _kill(self, address: str, reason: str) -> None:
        process = self.processes.pop(address, None)
        if process is None:
            return
        self.engines.pop(address, None)
        process.close()
        node_id = self.node_of[address]
        msg = p.WorkerExited(worker_id=address, node_id=node_id, reason=reason)
        self.later(self.network.local_latency, self.deliver, address, node_id, msg)

    # ------------------------------------------------------------------ node failure

    def kill_node(self, node_id: str, delay: float) -> None:
        if delay <= 0 and self.current_thread() is None:
            self._kill_node(node_id)
        else:
            self.later(delay, self._kill_node, node_id)

    def _kill_node(self, node_id: str) -> None:
        """The node and its processes stop now; NodeDied reaches the control plane after detection."""
        if self.node_managers.pop(node_id, None) is None:
            return
        self.silent_nodes[node_id] = None
        self.engines.pop(node_id, None)
        for address in [a for a, process in self.processes.items() if process.node_id == node_id]:
            self.engines.pop(address, None)
            self.processes.pop(address).close()
        reason = f"it stopped at t={self.env.now:.6f}s (sim.Cluster.kill_node)"
        self.later(self.node_death_detection_s, self._node_died, node_id, reason)

    def _node_died(self, node_id: str, reason: str) -> None:
        del self.silent_nodes[node_id]
        self.deliver(p.CONTROL_PLANE, p.CONTROL_PLANE, p.NodeDied(node_id=node_id, reason=reason))

    def current_thread(self):
        return getattr(greenlet.getcurrent(), "sim_thread", None)

    def current(self) -> SimProcess:
        thread = self.current_thread()
        return thread.process if thread is not None else self.driver

    # ------------------------------------------------------------------ blocking

    def block(self, process: SimProcess, waiter) -> None:
        thread = self.current_thread()
        if thread is None:
            self.run_until(lambda: waiter.done, waiting_for=waiter)
            return
        self.waiting[waiter] = (thread, thread_token(thread) + 1)
        try:
            self._park(thread)
        except KeyboardInterrupt:
            self.waiting.pop(waiter, None)
            process.call(process.cw.abandon, waiter)
            raise

    def _park(self, thread) -> None:
        thread.token = thread_token(thread) + 1
        thread.greenlet.parent.switch()
        if thread.interrupted:
            thread.interrupted = False
            raise KeyboardInterrupt("the task was cancelled")

    def _wake(self, address: str, waiter) -> None:
        process = self.processes.get(address)
        if process is not None and process.wake_async(waiter):
            return
        entry = self.waiting.pop(waiter, None)
        if entry is not None:
            self._resume(*entry)

    def _resume(self, thread, token: int) -> None:
        if thread.token == token and thread.process.alive:
            thread.resume()

    def interrupt(self, thread) -> None:
        self.soon(self._resume, thread, thread_token(thread))

    def sleep(self, seconds: float) -> None:
        thread = self.current_thread()
        if thread is None:
            alarm = self.env.timeout(seconds)
            self.run_until(lambda: alarm.processed)
            return
        self.later(seconds, self._resume, thread, thread_token(thread) + 1)
        self._park(thread)

    def run_until(self, done, waiting_for=None) -> None:
        """Run the event loop (as the driver) until ``done()``."""
        driver_random = virtual.RandomState()
        try:
            while not done():
                if self.env.peek() == INF:
                    self._stalled(waiting_for)
                    continue
                self.env.step()
        finally:
            driver_random.restore()

    def _stalled(self, waiting_for) -> None:
        if self.quiescent_at == self.steps:
            raise exceptions.NoProgressError(self._stall_report(waiting_for))
        self.quiescent_at = self.steps
        for address in [p.CONTROL_PLANE, *self.node_managers]:
            self.deliver(address, address, p.ClusterQuiescent())
        self.steps -= len(self.node_managers) + 1

    def _stall_report(self, waiting_for) -> str:
        cw = self.driver.cw
        pending = [f"{t.spec.name} ({t.state.value})" for t in list(cw.tasks.values())[:10]]
        what = f"objects {list(waiting_for.pending)[:10]}" if getattr(waiting_for, "pending", None) else "an event"
        return (f"The simulated cluster is idle at t={self.env.now:.6f}s but the driver still waits for {what}; "
                f"nothing can ever make progress. Pending tasks of the driver: {pending or 'none'}. "
                f"Warnings so far: {self.warnings[-3:] or 'none'}.")

    # ------------------------------------------------------------------ the end

    def shutdown(self) -> None:
        for address in list(self.processes):
            process = self.processes.pop(address)
            self.engines.pop(address, None)
            process.close()
        virtual.deactivate(self)
        self.waiting.clear()

    def validate_all(self) -> None:
        for engine in self.engines.values():
            engine.validate()


def thread_token(thread) -> int:
    return getattr(thread, "token", 0)
