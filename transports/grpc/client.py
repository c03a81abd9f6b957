"""The driver's side of the gRPC transport: start a local cluster, attach, shut it down.

``start_local`` makes a session directory (mode 0700) holding the cluster's token (mode
0600), starts a head node process in its own process group, waits for it to announce its
endpoint, and attaches this process as a driver. ``shutdown`` detaches and, if this driver
started the cluster, kills the head's whole process group and removes the session directory.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from transports.grpc.host import ProcessHost

real_monotonic = time.monotonic


class GrpcTransport:
    kind = "grpc"

    def __init__(self, host: ProcessHost, session: str, head: subprocess.Popen | None):
        self.host = host
        self.session = session
        self.head = head
        self.closed = False
        atexit.register(self.shutdown)

    def current(self) -> ProcessHost:
        return self.host

    def context_info(self) -> dict:
        return {"transport": "grpc", "address": self.host.endpoint, "session": self.session,
                "node_id": self.host.cw.node_id}

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = getattr(self.host, "loop", None)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self.head is not None:
            try:
                os.killpg(self.head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.head.wait()
            shutil.rmtree(self.session, ignore_errors=True)


def start_local(*, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None, namespace="",
                job_env=None, timeout: float = 30.0) -> GrpcTransport:
    session = tempfile.mkdtemp(prefix="rayref-session-")
    token = secrets.token_hex(32)
    fd = os.open(os.path.join(session, "token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    cmd = [sys.executable, "-m", "transports.grpc.node", "--session", session,
           "--num-cpus", str(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
           "--num-gpus", str(num_gpus or 0), "--resources", json.dumps(resources or {})]
    if object_store_memory:
        cmd += ["--object-store-memory", str(int(object_store_memory))]
    head = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL)
    info = _wait_for(os.path.join(session, "head.json"), head, timeout)
    host = ProcessHost(f"{info['node_id']}.d{os.getpid()}", info["node_id"], info["endpoint"], token,
                       is_driver=True, namespace=namespace, job_env=job_env)
    _attach_in_thread(host)
    return GrpcTransport(host, session, head)


def _wait_for(path: str, head: subprocess.Popen, timeout: float) -> dict:
    deadline = real_monotonic() + timeout
    while not os.path.exists(path):
        if head.poll() is not None:
            raise RuntimeError(f"The rayref head process exited with code {head.returncode} before it started.")
        if real_monotonic() > deadline:
            os.killpg(head.pid, signal.SIGKILL)
            raise TimeoutError(f"The rayref head did not start within {timeout} s.")
        time.sleep(0.01)
    with open(path) as f:
        return json.load(f)


def _attach_in_thread(host: ProcessHost) -> None:
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(host.attach())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, name="rayref-driver-loop", daemon=True).start()
    ready.wait(10)
