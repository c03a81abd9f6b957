"""A node process: the node manager (and, on the head, the control plane) behind a gRPC server.

The node is also the router of its machine: its workers and drivers attach to it with one
stream each, and every envelope is routed by its receiver's address. ``control-plane`` lives
on the head; a node id is a node; ``<node id>.<rest>`` is a process attached to that node.
Envelopes for other nodes go over one outgoing stream per peer node.

Worker processes are started here (``StartWorker``) and killed here (``KillWorker``); a
worker whose stream ends has exited, and the node manager hears ``WorkerExited``. Killing a
node process kills its workers: they are in its process group and leave when their stream
ends.

    python -m transports.grpc.node --session DIR [--head | --head-address HOST:PORT] [--num-cpus N] ...
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

import grpc

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.control_plane import ControlPlane
from rayref.core.node_manager import NodeManager
from rayref.core.resources import Resources
from transports.grpc import shm, wire

log = logging.getLogger("rayref.node")


DECLARED_DEAD = "declared dead"
"""What the head sends a node it found dead by health checks: a node that hears it stops."""


@dataclass(frozen=True)
class HealthChecks:
    """How the head checks that nodes live: Ray's defaults (``health_check_period_ms`` 3000,
    ``health_check_timeout_ms`` 10000, ``health_check_failure_threshold`` 5), each overridden by
    ``RAYREF_HEALTH_CHECK_PERIOD_S``, ``RAYREF_HEALTH_CHECK_TIMEOUT_S`` and
    ``RAYREF_HEALTH_CHECK_FAILURE_THRESHOLD`` in the head's environment."""

    period: float = 3.0
    timeout: float = 10.0
    threshold: int = 5

    @classmethod
    def from_env(cls) -> HealthChecks:
        return cls(period=_positive("RAYREF_HEALTH_CHECK_PERIOD_S", cls.period, float),
                   timeout=_positive("RAYREF_HEALTH_CHECK_TIMEOUT_S", cls.timeout, float),
                   threshold=_positive("RAYREF_HEALTH_CHECK_FAILURE_THRESHOLD", cls.threshold, int))


def _positive(name: str, default, kind):
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise SystemExit(f"rayref node: {name}={text!r} must be a positive {kind.__name__} "
                         f"(default {default}); fix or unset it.")
    return value


class NodeServer:
    def __init__(self, *, node_id: str, session: str, token: str, total: Resources, store_bytes: int,
                 head_id: str = "", head_endpoint: str = "", config: EngineConfig | None = None,
                 announce: str = "head.json", host: str = "127.0.0.1", owner_pid: int = 0,
                 health: HealthChecks | None = None):
        self.owner_pid = owner_pid
        self.health = health or HealthChecks()
        self.announce = announce
        self.host = host
        self.node_id = node_id
        self.session = session
        self.token = token
        self.total = total
        self.store_bytes = store_bytes
        self.is_head = not head_endpoint
        self.head_id = head_id or node_id
        self.head_endpoint = head_endpoint
        self.config = config or EngineConfig()
        self.cp = ControlPlane(self.config, random.Random()) if self.is_head else None
        self.nm: NodeManager | None = None
        self.attached: dict[str, wire.Outbox] = {}
        self.peers: dict[str, wire.Outbox] = {}
        self.workers: dict[str, subprocess.Popen] = {}
        self.endpoint = ""
        self.inbox: deque = deque()
        self.delivering = False
        self.declared_dead: set[str] = set()
        self.owner_gone = False

    # ------------------------------------------------------------------ start and stop

    async def serve(self, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        server = grpc.aio.server(options=wire.OPTIONS)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(wire.SERVICE, {
            "Attach": grpc.stream_stream_rpc_method_handler(
                self.attach, request_deserializer=wire.identity, response_serializer=wire.identity),
            "Send": grpc.stream_unary_rpc_method_handler(
                self.receive, request_deserializer=wire.identity, response_serializer=wire.identity),
            "Info": grpc.unary_unary_rpc_method_handler(
                self.info, request_deserializer=wire.identity, response_serializer=wire.identity),
        }),))
        port = server.add_insecure_port(f"{self.host}:{port}")
        await server.start()
        self.endpoint = f"{self.host}:{port}"
        if self.is_head:
            self.head_endpoint = self.endpoint
        self.nm = NodeManager(node_id=self.node_id, total=self.total, config=self.config, rng=random.Random(),
                              object_store_memory=self.store_bytes, is_head=self.is_head, address=self.endpoint)
        self.execute(self.node_id, self.nm.start())
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopped.set)
        self._announce()
        if self.owner_pid:
            asyncio.ensure_future(self._watch_owner())
        if self.is_head:
            asyncio.ensure_future(self._check_health(self.health))
        await self.stopped.wait()
        self.stop_workers()
        for outbox in [*self.attached.values(), *self.peers.values()]:
            outbox.close()  # calls end cleanly, here and at their other end, rather than being cancelled
        await server.stop(0.2)
        if self.owner_gone:  # not a node that stops alone (declared dead): the others still need the session
            shm.cleanup(self.session)
            shutil.rmtree(self.session, ignore_errors=True)

    async def _watch_owner(self) -> None:
        """A cluster started by a driver ends with that driver, even one killed with SIGKILL."""
        while True:
            try:
                os.kill(self.owner_pid, 0)
            except ProcessLookupError:
                self.owner_gone = True
                self.stopped.set()
                return
            await asyncio.sleep(0.5)

    async def _check_health(self, checks: HealthChecks) -> None:
        """The head asks every live node's ``Info`` each period; a node that fails ``threshold``
        checks in a row (no answer within ``timeout``) is dead: hung, or cut off with its connection
        open (a connection that ends is noticed at once, ``_peer_gone``). It is told so, in case it
        comes back; what it sends meanwhile is dropped."""
        misses: dict[str, int] = {}
        channels: dict[str, grpc.aio.Channel] = {}
        while not self.stopped.is_set():
            await asyncio.sleep(checks.period)
            nodes = [n for n in self.cp.nodes.values() if n.alive and n.node_id != self.node_id]
            for node in nodes:
                if node.node_id not in channels:
                    channels[node.node_id] = wire.channel(node.address)
            answered = await asyncio.gather(*(self._answers(channels[n.node_id], checks.timeout) for n in nodes))
            for node, ok in zip(nodes, answered):
                misses[node.node_id] = 0 if ok else misses.get(node.node_id, 0) + 1
                if misses[node.node_id] >= checks.threshold and not self.stopped.is_set():
                    self._declare_dead(node.node_id, f"it did not answer {checks.threshold} health checks in a row "
                                                     f"({checks.timeout:g} s each): the node is hung or cut off")
            for node_id in [n for n in channels if not self.cp.nodes[n].alive]:
                await channels.pop(node_id).close()

    async def _answers(self, channel: grpc.aio.Channel, timeout: float) -> bool:
        info = channel.unary_unary(wire.INFO, request_serializer=wire.identity, response_deserializer=wire.identity)
        try:
            await info(b"", metadata=wire.metadata(self.token), timeout=timeout)
            return True
        except grpc.aio.AioRpcError:
            return False

    def _declare_dead(self, node_id: str, reason: str) -> None:
        log.warning("node %s is dead: %s", node_id, reason)
        self.declared_dead.add(node_id)
        self.deliver(p.CONTROL_PLANE, p.CONTROL_PLANE, p.NodeDied(node_id=node_id, reason=reason))
        self.peer(node_id).put(wire.encode(self.node_id, node_id, DECLARED_DEAD))

    def _announce(self) -> None:
        path = os.path.join(self.session, self.announce)
        with open(path + ".tmp", "w") as f:
            json.dump({"node_id": self.node_id, "endpoint": self.endpoint, "pid": os.getpid()}, f)
        os.replace(path + ".tmp", path)

    def stop_workers(self) -> None:
        for popen in self.workers.values():
            if popen.poll() is None:
                popen.kill()
        for popen in self.workers.values():
            popen.wait()

    # ------------------------------------------------------------------ routing

    def node_of(self, address: str) -> str:
        return self.head_id if address == p.CONTROL_PLANE else address.split(".", 1)[0]

    def route(self, src: str, to: str, msg: p.Message) -> None:
        node = self.node_of(to)
        if node == self.node_id:
            self.deliver(src, to, msg)
        else:
            outbox = self.peer(node)
            for item in wire.encode_for_node(src, to, msg):
                outbox.put(item)

    def deliver(self, src: str, to: str, msg: p.Message) -> None:
        """To an engine of this node (in arrival order, never re-entrantly) or an attached process."""
        if to == self.node_id or (to == p.CONTROL_PLANE and self.cp is not None):
            self.inbox.append((to, msg))
            if not self.delivering:
                self._drain_inbox()
            return
        outbox = self.attached.get(to)
        if outbox is not None:
            outbox.put(wire.encode(src, to, msg))
        elif not isinstance(msg, p.PeerUnreachable):
            self.route(to, src, p.PeerUnreachable(to=to, original=msg))

    def _drain_inbox(self) -> None:
        self.delivering = True
        try:
            while self.inbox:
                to, msg = self.inbox.popleft()
                engine = self.nm if to == self.node_id else self.cp
                self.execute(to, engine.handle(msg, time.monotonic()))
        finally:
            self.delivering = False

    def execute(self, address: str, commands) -> None:
        for cmd in commands:
            kind = type(cmd)
            if kind is p.Send:
                self.route(address, cmd.to, cmd.msg)
            elif kind is p.StartTimer:
                self.loop.call_later(cmd.delay, self.deliver, address, address, p.TimerFired(key=cmd.key))
            elif kind is p.StartWorker:
                self.spawn(cmd.worker_id)
            elif kind is p.KillWorker:
                popen = self.workers.get(cmd.worker_id)
                if popen is not None and popen.poll() is None:
                    popen.kill()
            elif kind is p.Log:
                log.warning(cmd.text)
            elif kind is p.SpillObject:  # to a file of the session (shm.spill); the store then reads it there
                self.deliver(address, address, p.ObjectSpilled(object_id=cmd.object_id, blob=shm.spill(cmd.blob)))
            else:
                raise TypeError(f"a node does not carry out {cmd!r}")

    def endpoint_of(self, node_id: str) -> str:
        if node_id == self.head_id:
            return self.head_endpoint
        views = [self.cp.nodes.values()] if self.cp else []
        views.append(self.nm.view)
        for view in views:
            for node in view:
                if node.node_id == node_id:
                    return node.address
        raise KeyError(node_id)

    def peer(self, node_id: str) -> wire.Outbox:
        outbox = self.peers.get(node_id)
        if outbox is None:
            outbox = self.peers[node_id] = wire.Outbox()
            asyncio.ensure_future(self._stream_to(node_id, outbox))
        return outbox

    async def _stream_to(self, node_id: str, outbox: wire.Outbox) -> None:
        try:
            async with wire.channel(self.endpoint_of(node_id)) as channel:
                send = channel.stream_unary(wire.SEND, request_serializer=wire.identity,
                                            response_deserializer=wire.identity)
                await send(outbox.batches(), metadata=wire.metadata(self.token))
        except (grpc.aio.AioRpcError, KeyError) as error:
            details = error.details() if isinstance(error, grpc.aio.AioRpcError) else repr(error)
            log.warning("lost the stream to node %s: %s", node_id, details)
            self.peers.pop(node_id, None)

    # ------------------------------------------------------------------ the gRPC methods

    async def info(self, request: bytes, context) -> bytes:
        if not wire.authorized(context, self.token):
            return b""
        return json.dumps({"node_id": self.node_id, "endpoint": self.endpoint,
                           "head_id": self.head_id, "head_endpoint": self.head_endpoint}).encode()

    async def receive(self, request_iterator, context):
        if not wire.authorized(context, self.token):
            return b""
        peers = []
        stream = object()  # what arrives on this call of transfers (shm.discard_cut_short)

        def handle(data: bytes) -> None:
            source = self._route_batch(data, stream)
            if not peers:
                peers.append(source)

        try:
            if not await wire.read_until(self.stopped, request_iterator, handle):
                return b""
        except asyncio.CancelledError:  # gRPC cancels the call when its peer's connection is gone
            self._peer_gone(peers[0] if peers else "")
            raise
        except Exception as error:  # noqa: BLE001 - the peer's connection broke: it is as good as dead
            log.warning("the stream from node %s broke: %s", peers, error)
        finally:
            shm.discard_cut_short(stream)
        self._peer_gone(peers[0] if peers else "")
        return b""

    def _peer_gone(self, peer: str) -> None:
        """The head is the failure detector: a node whose stream to it ends has died (or left)."""
        if self.cp is not None and peer and peer != self.node_id and not self.stopped.is_set():
            self.deliver(p.CONTROL_PLANE, p.CONTROL_PLANE, p.NodeDied(
                node_id=peer, reason="its connection to the head was lost (the node process exited or was killed)"))

    async def attach(self, request_iterator, context):
        if not wire.authorized(context, self.token):
            return
        (address, _, _), = wire.unpack(await request_iterator.__anext__())
        outbox = self.attached[address] = wire.Outbox()
        reader = asyncio.ensure_future(self._read(request_iterator))
        reader.add_done_callback(lambda _: outbox.close())
        if address in self.workers:
            self.deliver(address, self.node_id, p.WorkerRegistered(worker_id=address, node_id=self.node_id))
        try:
            yield wire.pack([wire.encode(self.node_id, address, "attached")])
            async for batch in outbox.batches():
                yield batch
        except asyncio.CancelledError:  # this node is stopping
            pass
        finally:
            if self.attached.get(address) is outbox:
                del self.attached[address]
            self._detached(address)

    async def _read(self, request_iterator) -> None:
        try:
            async for data in request_iterator:
                self._route_batch(data)
        except Exception:  # noqa: BLE001 - the process's stream broke: it has detached
            pass

    def _route_batch(self, data: bytes, stream: object = None) -> str:
        """Route one gRPC message (of ``stream``); the node its envelopes came from. (A function,
        so that no envelope, and no segment it maps, outlives its routing.)"""
        source = ""
        for src, to, msg in wire.unpack(data):
            source = self.node_of(src)
            if source in self.declared_dead:
                continue
            if type(msg) is shm.Chunk:
                shm.receive_chunk(msg, stream)
            elif type(msg) is str and msg == DECLARED_DEAD:  # this node was hung or cut off, and the cluster has gone on without it
                log.warning("the head declared this node dead; stopping it and its workers")
                self.stopped.set()
            else:
                self.route(src, to, msg)
        return source

    def _detached(self, address: str) -> None:
        popen = self.workers.pop(address, None)
        if popen is None:
            if self.nm is not None:
                self.deliver(address, self.node_id, p.WorkerExited(worker_id=address, node_id=self.node_id,
                                                                   reason="the driver detached"))
            return
        if popen.poll() is None:
            popen.kill()
        code = popen.wait()
        reason = f"the worker process exited with code {code}" if code >= 0 else f"killed by signal {-code}"
        self.deliver(address, self.node_id, p.WorkerExited(worker_id=address, node_id=self.node_id, reason=reason))

    def spawn(self, worker_id: str) -> None:
        cmd = [sys.executable, "-m", "transports.grpc.worker", "--node", self.endpoint, "--node-id", self.node_id,
               "--worker-id", worker_id, "--session", self.session]
        self.workers[worker_id] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def read_token(session: str) -> str:
    with open(os.path.join(session, "token")) as f:
        return f.read().strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="a rayref node process")
    parser.add_argument("--session", required=True)
    parser.add_argument("--head-address", default="")
    parser.add_argument("--head-id", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--announce", default="head.json")
    parser.add_argument("--owner-pid", type=int, default=0, help="stop when this process is gone")
    parser.add_argument("--num-cpus", type=float, default=os.cpu_count() or 1)
    parser.add_argument("--num-gpus", type=float, default=None, help="default: the GPUs detected")
    parser.add_argument("--resources", default="{}")
    parser.add_argument("--memory", type=int, default=0)
    parser.add_argument("--object-store-memory", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="(node) %(message)s")
    node_id = "n" + secrets.token_hex(4)
    shm.configure(args.session, node_id=node_id)
    devices = detect_gpus()
    num_gpus = args.num_gpus if args.num_gpus is not None else len(devices)
    devices = (devices + [str(i) for i in range(len(devices), int(num_gpus))])[:int(num_gpus)]
    os.environ["RAYREF_NODE_GPUS"] = ",".join(devices)
    store = args.object_store_memory or int(_host_memory() * 0.3)
    amounts = dict(json.loads(args.resources))
    amounts.update({"CPU": args.num_cpus, "GPU": num_gpus, "object_store_memory": store,
                    "memory": args.memory or max(0, int(_host_memory() * 0.7) - store),
                    f"node:{args.host}": 1})
    if not args.head_address:
        amounts["node:__internal_head__"] = 1
    health = HealthChecks.from_env()  # before anything starts: a bad setting is a clean exit
    server = NodeServer(node_id=node_id, session=args.session, token=read_token(args.session),
                        total=Resources(amounts), store_bytes=store, head_id=args.head_id,
                        head_endpoint=args.head_address, announce=args.announce, host=args.host,
                        owner_pid=args.owner_pid, health=health)
    asyncio.run(server.serve(args.port))


def detect_gpus() -> list[str]:
    """This node's GPU device ids: CUDA_VISIBLE_DEVICES if set, else what ``nvidia-smi -L`` lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    return [str(i) for i in range(len(lines))] if listed.returncode == 0 else []


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


if __name__ == "__main__":
    main()
