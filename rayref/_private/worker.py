"""The connection between the public API and the transport the driver is connected to.

There is no process-wide engine: the API asks the connected transport for the *current
process* (in sim, the simulated process whose user code is running right now) and talks to
that process's core worker. The transport is set by ``init`` and cleared by ``shutdown``.
"""
from __future__ import annotations

import contextvars
from typing import Any

_transport: Any = None
register_eagerly: contextvars.ContextVar = contextvars.ContextVar("rayref_register_eagerly", default=True)


def set_transport(transport) -> None:
    global _transport
    _transport = transport


def transport():
    return _transport


def current():
    """The process context of the running user code; starts a local cluster on first use."""
    if _transport is None:
        from rayref import api
        api.init()
    return _transport.current()


def current_or_none():
    return _transport.current() if _transport is not None else None
