"""Every seed example runs, unchanged, on each transport: ``ray.init(...)`` as the page writes it
picks the transport from ``RAYREF_TRANSPORT``, which this sets per run."""
import pytest


@pytest.fixture(autouse=True, params=["sim", "grpc"])
def seed_transport(request, monkeypatch, tmp_path):
    monkeypatch.setenv("RAYREF_TRANSPORT", request.param)
    monkeypatch.setenv("RAYREF_SESSION_ROOT", str(tmp_path / "sessions"))
    return request.param
