"""A cluster's session on this machine: its directory, token, node processes, and how to find it.

A session directory (mode 0700, under ``root()``) holds the cluster's token (mode 0600,
like Ray 2.60's token auth), one announce file per node process (its node id, endpoint and
pid) and nothing else. ``session_latest`` there points at the newest session, which is
what ``address="auto"`` and ``rayref stop`` use. Every node process is the leader of its own
process group, with its workers inside it, so stopping a session is killing those groups.
A machine that joins a cluster whose head runs elsewhere has a *joined* session (``join``): the
token, and a head announce with pid 0.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from transports.grpc import shm



def root() -> str:
    """Where sessions live: ``$RAYREF_SESSION_ROOT``, else ``<tmp>/rayref-sessions``."""
    return os.environ.get("RAYREF_SESSION_ROOT") or os.path.join(tempfile.gettempdir(), "rayref-sessions")


def latest_link() -> str:
    return os.path.join(root(), "session_latest")

real_monotonic = time.monotonic
real_sleep = time.sleep


class Session:
    def __init__(self, path: str):
        self.path = path

    @classmethod
    def create(cls, token: str | None = None) -> Session:
        """A new session directory holding ``token`` (default: a new one)."""
        os.makedirs(root(), mode=0o700, exist_ok=True)
        session = cls(tempfile.mkdtemp(prefix="session_", dir=root()))
        fd = os.open(os.path.join(session.path, "token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token or secrets.token_hex(32))
        return session

    @classmethod
    def join(cls, head: dict, token: str) -> Session:
        """A session on this machine for a cluster whose head runs elsewhere (``head``: its
        ``node_id`` and ``endpoint``): the token, and a head announce without a process."""
        session = cls.create(token)
        with open(os.path.join(session.path, "head.json"), "w") as f:
            json.dump({"node_id": head["node_id"], "endpoint": head["endpoint"], "pid": 0}, f)
        return session

    @classmethod
    def latest(cls) -> Session | None:
        path = os.path.realpath(latest_link())
        return cls(path) if os.path.exists(os.path.join(path, "head.json")) else None

    @classmethod
    def for_address(cls, address: str) -> Session | None:
        for head in glob.glob(os.path.join(root(), "session_*", "head.json")):
            try:
                with open(head) as f:
                    if json.load(f)["endpoint"] == address:
                        return cls(os.path.dirname(head))
            except (OSError, ValueError, KeyError):
                continue
        return None

    @property
    def token(self) -> str:
        with open(os.path.join(self.path, "token")) as f:
            return f.read().strip()

    def head(self) -> dict:
        with open(os.path.join(self.path, "head.json")) as f:
            return json.load(f)

    def local_node(self) -> dict:
        """The node a process of this machine attaches to: the head if it runs here, else the first
        node started here."""
        local = [node for node in self.nodes() if node["pid"]]
        if not local:
            raise ConnectionError(f"No node of the rayref cluster of {self.path} runs on this machine any more; "
                                  f"`rayref stop`, then `rayref start --address=...` again.")
        head = self.head()
        return head if head["pid"] else local[0]

    def mark_latest(self) -> None:
        link = latest_link() + f".{os.getpid()}"
        os.symlink(self.path, link)
        os.replace(link, latest_link())

    def start_node(self, *, head: dict | None = None, num_cpus=None, num_gpus=None, resources=None,
                   object_store_memory=None, memory=None, port: int = 0, host: str = "127.0.0.1",
                   owner_pid: int = 0, log_to_file: bool = False, timeout: float = 30.0) -> dict:
        """Start a node process (the head if ``head`` is None) and wait until it serves.

        Its output (and its workers') goes to this process's, or with ``log_to_file`` (a
        daemon started by ``rayref start``) to ``<session>/<announce>.log``.
        """
        announce = "head.json" if head is None else f"node-{secrets.token_hex(4)}.json"
        cmd = [sys.executable, "-m", "transports.grpc.node", "--session", self.path, "--announce", announce,
               "--port", str(port), "--host", host, "--resources", json.dumps(resources or {})]
        for flag, value in (("--num-cpus", num_cpus), ("--num-gpus", num_gpus),
                            ("--object-store-memory", object_store_memory), ("--memory", memory)):
            if value is not None:
                cmd += [flag, str(value)]
        if head is not None:
            cmd += ["--head-address", head["endpoint"], "--head-id", head["node_id"]]
        if owner_pid:
            cmd += ["--owner-pid", str(owner_pid)]
        log = open(os.path.join(self.path, announce + ".log"), "ab") if log_to_file else None
        try:
            process = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT if log else None,
                                       env={"GRPC_VERBOSITY": "ERROR", **os.environ})
        finally:
            if log is not None:
                log.close()
        return self._wait_for(os.path.join(self.path, announce), process, timeout)

    @staticmethod
    def _wait_for(path: str, process: subprocess.Popen, timeout: float) -> dict:
        deadline = real_monotonic() + timeout
        while not os.path.exists(path):
            if process.poll() is not None:
                raise RuntimeError(f"The rayref node process exited with code {process.returncode} before it "
                                   f"started; see its output above.")
            if real_monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise TimeoutError(f"The rayref node process did not start within {timeout} s.")
            real_sleep(0.01)
        with open(path) as f:
            return json.load(f)

    def nodes(self) -> list[dict]:
        found = []
        for path in sorted(glob.glob(os.path.join(self.path, "*.json"))):
            if path.endswith(".tmp"):
                continue
            with open(path) as f:
                found.append(json.load(f))
        return found

    def stop(self) -> None:
        """Kill every node process of the session on this machine and its workers (each node's process
        group) and wait, 5 s at most, until none is left; remove the session's shared-memory
        segments, its spill files and its directory."""
        local = [node for node in self.nodes() if node["pid"]]  # a joined session's head runs elsewhere
        for node in local:
            try:
                os.killpg(node["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = real_monotonic() + 5
        for node in local:
            while _alive(node["pid"]) and real_monotonic() < deadline:
                real_sleep(0.01)
        groups = {node["pid"] for node in local}  # each node leads the group of its workers
        while _live_members(groups) and real_monotonic() < deadline:
            real_sleep(0.01)
        if os.path.realpath(latest_link()) == os.path.realpath(self.path):
            try:
                os.unlink(latest_link())
            except FileNotFoundError:
                pass
        shm.cleanup(self.path)  # what its killed processes left in /dev/shm
        shutil.rmtree(self.path, ignore_errors=True)


def _live_members(groups: set[int]) -> bool:
    """True while a process (not a zombie) of one of these process groups is left (Linux ``/proc``)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in groups:
                return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True
