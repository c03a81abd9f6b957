"""What simulated code sees of its process and of time.

While a simulated cluster is connected, a few functions of ``time`` and ``os`` are replaced by
dispatchers. On the simulator's own OS thread they answer for the simulated process that is
running (a task's greenlet, or the driver): ``time.sleep`` waits in virtual time;
``time.time``/``monotonic``/``perf_counter`` read the virtual clock; ``os.getpid`` is the
simulated pid; ``os._exit`` kills the simulated process (a worker crash), not Python. On any
other thread they are the real functions. Everything is restored on disconnect.

Each task also gets its own seeded ``random`` and ``numpy.random`` state, derived from the
run's seed and the task's id and attempt, saved and restored around every switch, so a task
draws the same numbers whatever runs beside it, and the driver's own state is untouched.
"""
from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import time

EPOCH = 1_700_000_000.0
_real = {
    "sleep": time.sleep, "time": time.time, "monotonic": time.monotonic, "perf_counter": time.perf_counter,
    "time_ns": time.time_ns, "monotonic_ns": time.monotonic_ns, "perf_counter_ns": time.perf_counter_ns,
    "getpid": os.getpid, "_exit": os._exit,
}
_active = None


class ProcessExit(BaseException):
    """Raised inside simulated code by ``os._exit``: the simulated process dies."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _runtime():
    rt = _active
    if rt is not None and threading.get_ident() == rt.thread_ident:
        return rt
    return None


def _sleep(seconds):
    rt = _runtime()
    if rt is None:
        return _real["sleep"](seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    rt.sleep(float(seconds))


def _time():
    rt = _runtime()
    return EPOCH + rt.env.now if rt is not None else _real["time"]()


def _monotonic():
    rt = _runtime()
    return rt.env.now if rt is not None else _real["monotonic"]()


def _perf_counter():
    rt = _runtime()
    return rt.env.now if rt is not None else _real["perf_counter"]()


def _time_ns():
    rt = _runtime()
    return int((EPOCH + rt.env.now) * 1e9) if rt is not None else _real["time_ns"]()


def _monotonic_ns():
    rt = _runtime()
    return int(rt.env.now * 1e9) if rt is not None else _real["monotonic_ns"]()


def _perf_counter_ns():
    rt = _runtime()
    return int(rt.env.now * 1e9) if rt is not None else _real["perf_counter_ns"]()


def _getpid():
    rt = _runtime()
    thread = rt.current_thread() if rt is not None else None
    return thread.process.pid if thread is not None else _real["getpid"]()


def _exit(code=0):
    rt = _runtime()
    if rt is not None and rt.current_thread() is not None:
        raise ProcessExit(code)
    _real["_exit"](code)


_patches = [(time, "sleep", _sleep), (time, "time", _time), (time, "monotonic", _monotonic),
            (time, "perf_counter", _perf_counter), (time, "time_ns", _time_ns),
            (time, "monotonic_ns", _monotonic_ns), (time, "perf_counter_ns", _perf_counter_ns),
            (os, "getpid", _getpid), (os, "_exit", _exit)]


def activate(runtime) -> None:
    global _active
    if _active is not None and _active is not runtime:
        raise RuntimeError("Another simulated cluster is connected in this process; call rayref.shutdown() first.")
    _active = runtime
    for module, name, fn in _patches:
        setattr(module, name, fn)


def deactivate(runtime) -> None:
    global _active
    if _active is runtime:
        _active = None
        for module, name, _ in _patches:
            setattr(module, name, _real[name])


def task_seed(run_seed: int, task_id: str, attempt: int) -> int:
    digest = hashlib.blake2b(f"{run_seed}/{task_id}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class RandomState:
    """The ``random`` and ``numpy.random`` global states of one simulated thread or the driver."""

    __slots__ = ("py", "np")

    def __init__(self, seed: int | None = None):
        if seed is None:
            self.py, self.np = random.getstate(), _np_get()
        else:
            random.seed(seed)
            numpy = sys.modules.get("numpy")
            if numpy is not None:
                numpy.random.seed(seed % (2 ** 32))
            self.py, self.np = random.getstate(), _np_get()

    def save(self) -> None:
        self.py, self.np = random.getstate(), _np_get()

    def restore(self) -> None:
        random.setstate(self.py)
        if self.np is not None:
            sys.modules["numpy"].random.set_state(self.np)


def _np_get():
    numpy = sys.modules.get("numpy")
    return numpy.random.get_state() if numpy is not None else None
