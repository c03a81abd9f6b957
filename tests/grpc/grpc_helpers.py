"""Helpers for the gRPC tests."""
import os


def processes_of(session_path: str) -> list[int]:
    """Live processes whose command line names ``session_path`` (its nodes and workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if session_path in cmdline and state != "Z":
            found.append(int(entry))
    return found
