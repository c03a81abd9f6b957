"""gRPC tests start real processes: each is bounded in time and must leave none behind."""
import os
import signal
import sys

import pytest

import rayref

sys.path.insert(0, os.path.dirname(__file__))

from grpc_helpers import cmdline, eventually, processes_of  # noqa: E402


@pytest.fixture(autouse=True)
def _private_session_root(tmp_path, monkeypatch):
    """Sessions of these tests live in their own folder, never touching a developer's cluster. A
    test that leaves a process of those sessions running fails (LIFE2), and the process is killed."""
    monkeypatch.setenv("RAYREF_SESSION_ROOT", str(tmp_path / "sessions"))
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
