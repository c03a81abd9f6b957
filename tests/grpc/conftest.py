"""gRPC tests start real processes: each is bounded in time and must leave none behind."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _private_session_root(tmp_path, monkeypatch):
    """Sessions of these tests live in their own folder, never touching a developer's cluster."""
    monkeypatch.setenv("RAYREF_SESSION_ROOT", str(tmp_path / "sessions"))
    yield
