"""gRPC tests start real processes: each is bounded in time and must leave none behind."""
import os
import signal
import sys

import pytest

import rayref

sys.path.insert(0, os.path.dirname(__file__))

from grpc_helpers import cmdline, eventually, processes_of  # noqa: E402
from transports.grpc import shm  # noqa: E402


def _segments() -> set[str]:
    try:
        return {name for name in os.listdir(shm.SHM_DIR) if name.startswith(shm.PREFIX)}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def _private_session_root(tmp_path, monkeypatch):
    """Sessions of these tests live in their own folder, never touching a developer's cluster. A
    test that leaves a process of those sessions running, or a shared-memory segment that was not
    there before it, fails (LIFE2, OS4); what it left is removed."""
    monkeypatch.setenv("RAYREF_SESSION_ROOT", str(tmp_path / "sessions"))
    before = _segments()
    yield
    if rayref.is_initialized():
        rayref.shutdown()
    try:
        eventually(lambda: not processes_of(str(tmp_path)), 10.0, "no process of this test's sessions running")
    except AssertionError:
        left = processes_of(str(tmp_path))
        described = [cmdline(pid).replace("\0", " ") for pid in left]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"the test left {len(left)} process(es) running: {described}") from None
    try:  # a dropped segment is unlinked up to shm.GRACE after it was last sent
        eventually(lambda: not _segments() - before, shm.GRACE + 3.0, "no new shared-memory segment left")
    except AssertionError:
        left = sorted(_segments() - before)
        for name in left:
            os.unlink(os.path.join(shm.SHM_DIR, name))
        raise AssertionError(f"the test left {len(left)} shared-memory segment(s): {left}") from None
