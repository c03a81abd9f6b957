"""Helpers for the gRPC tests."""
import os
import time

real_monotonic = time.monotonic
real_sleep = time.sleep


def eventually(check, timeout=10.0, what="the condition"):
    """Wait (real time) until ``check()`` holds; fail saying ``what`` did not within ``timeout`` s."""
    deadline = real_monotonic() + timeout
    while not check():
        if real_monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        real_sleep(0.05)


def cmdline(pid: int) -> str:
    """The process's command line ('' if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_of(session_path: str) -> list[int]:
    """Live processes whose command line names ``session_path`` (its nodes and workers)."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and session_path in cmdline(int(entry)) and alive(int(entry))]
