"""The driver's side of the gRPC transport: start or find a cluster, attach, detach.

``start_local`` makes a new session (see ``session``), starts its head node and attaches this
process as a driver; ``shutdown`` then stops the whole cluster. ``connect`` attaches to a
running cluster (``address="auto"``: the newest session on this machine; ``"HOST:PORT"``: the
session whose head serves there; either way this process attaches to that session's node on
this machine; with no such session, the node at ``HOST:PORT`` itself, given its token in
``RAYREF_TOKEN``); ``shutdown`` then only detaches.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import secrets
import threading

import grpc

from transports.grpc import shm, wire
from transports.grpc.host import ProcessHost
from transports.grpc.session import Session


class GrpcTransport:
    kind = "grpc"

    def __init__(self, host: ProcessHost, session: Session | None, owns_cluster: bool):
        self.host = host
        self.session = session
        self.owns_cluster = owns_cluster
        self.closed = False
        if session is not None:
            shm.configure(session.path)
        atexit.register(self.shutdown)

    def current(self) -> ProcessHost:
        return self.host

    def context_info(self) -> dict:
        return {"transport": "grpc", "address": self.host.endpoint, "node_id": self.host.cw.node_id,
                "session": self.session.path if self.session else ""}

    def add_node(self, **resources) -> dict:
        """Start one more node process on this machine, joining this cluster (tests, examples)."""
        if self.session is None:
            raise RuntimeError("add_node() needs a cluster this driver started (rayref.init(transport='grpc')).")
        return self.session.start_node(head=self.session.head(), owner_pid=os.getpid() if self.owns_cluster else 0,
                                       **resources)

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.owns_cluster:
            _give_back_leases(self.host)
        _detach(self.host)
        if self.owns_cluster and self.session is not None:
            self.session.stop()


def start_local(*, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None, namespace="",
                job_env=None) -> GrpcTransport:
    session = Session.create()
    try:
        head = session.start_node(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                  object_store_memory=object_store_memory, owner_pid=os.getpid())
    except BaseException:
        session.stop()
        raise
    host = _attach(head, session.token, namespace, job_env)
    return GrpcTransport(host, session, owns_cluster=True)


def connect(address: str, *, namespace="", job_env=None) -> GrpcTransport:
    """Attach to the session's node on this machine; with no session here for ``address`` but
    ``RAYREF_TOKEN`` set, to the node serving at ``address`` (a cluster started elsewhere)."""
    session = Session.latest() if address == "auto" else Session.for_address(address)
    if session is not None:
        endpoint, token = session.local_node()["endpoint"], session.token
    elif address != "auto" and os.environ.get("RAYREF_TOKEN"):
        endpoint, token = address, os.environ["RAYREF_TOKEN"]
    else:
        where = "on this machine" if address == "auto" else f"at {address}"
        raise ConnectionError(f"No rayref cluster found {where}. Start one with `rayref start --head`, or pass "
                              f"the address it printed; for a cluster started elsewhere set RAYREF_TOKEN to its "
                              f"token.")
    node = describe(endpoint, token)
    return GrpcTransport(_attach(node, token, namespace, job_env), session, owns_cluster=False)


def describe(endpoint: str, token: str, timeout: float = 5.0) -> dict:
    """What the node at ``endpoint`` says of itself (``node_id``, ``endpoint``, ``head_id``,
    ``head_endpoint``); a clear ConnectionError if it cannot be reached or refuses ``token``."""
    async def ask() -> bytes:
        async with wire.channel(endpoint) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout)
            info = channel.unary_unary(wire.INFO, request_serializer=wire.identity,
                                       response_deserializer=wire.identity)
            return await info(b"", metadata=wire.metadata(token), timeout=timeout)

    try:
        return json.loads(asyncio.run(ask()))
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.UNAUTHENTICATED:
            raise ConnectionError(f"The rayref node at {endpoint} refused this token: {error.details()}") from None
        raise ConnectionError(f"Could not reach a rayref cluster at {endpoint} ({error.code().name}: "
                              f"{error.details()}).") from None
    except (asyncio.TimeoutError, OSError) as error:
        raise ConnectionError(f"Could not reach a rayref cluster at {endpoint} within {timeout} s "
                              f"({type(error).__name__}). Is it running? `rayref status` shows the local one.") from None


def _attach(head: dict, token: str, namespace: str, job_env) -> ProcessHost:
    address = f"{head['node_id']}.d{os.getpid()}x{secrets.token_hex(2)}"
    host = ProcessHost(address, head["node_id"], head["endpoint"], token, is_driver=True,
                       namespace=namespace, job_env=job_env)
    ready = threading.Event()

    failure: list = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(host.attach())
        except ConnectionError as error:
            failure.append(error)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        host.closing.set()
        loop.run_until_complete(host.server.stop(0.5))
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(host.channel.close())
        loop.close()

    host.loop_runner = threading.Thread(target=run, name="rayref-driver-loop", daemon=True)
    host.loop_runner.start()
    if not ready.wait(10):
        raise ConnectionError(f"Could not attach to the rayref node at {head['endpoint']} within 10 s.")
    if failure:
        raise failure[0]
    return host


def _give_back_leases(host: ProcessHost, timeout: float = 1.0) -> None:
    """Return the leases this driver keeps lingering, and wait (a little) until that is written:
    the node kills the workers still leased to a driver that detached, and the next driver of
    this cluster would have to start new ones."""
    loop = getattr(host, "loop", None)
    if loop is None or not loop.is_running() or host.detached.is_set():
        return
    host.call(host.cw.normal.return_idle)
    host.wait_written(timeout)


def _detach(host: ProcessHost) -> None:
    loop = getattr(host, "loop", None)
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
        host.loop_runner.join(5)
