"""A node's object store: bytes accounting, pinning, eviction and spilling.

Primary copies (put by their creator) are pinned until their owner frees them; copies pulled
from other nodes are secondary and may be evicted, least recently used first. When pinned
objects alone would exceed the capacity, the oldest pinned objects are spilled: they stay
readable but no longer count against memory (the sim charges no restore time for them yet).

Invariant OS1: ``used`` equals the bytes of the in-memory (unspilled) entries.
Invariant OS2: ``used <= capacity`` after every operation.
"""
from __future__ import annotations

from dataclasses import dataclass

from rayref.core.protocol import Blob


@dataclass(slots=True)
class StoredObject:
    blob: Blob
    owner: str
    pinned: bool
    spilled: bool = False
    last_use: int = 0


class ObjectStore:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.objects: dict[str, StoredObject] = {}
        self.clock = 0
        self.spilled_bytes = 0

    def __contains__(self, object_id: str) -> bool:
        return object_id in self.objects

    def get(self, object_id: str) -> Blob | None:
        entry = self.objects.get(object_id)
        if entry is None:
            return None
        self.clock += 1
        entry.last_use = self.clock
        return entry.blob

    def add(self, object_id: str, blob: Blob, owner: str, pinned: bool) -> None:
        if object_id in self.objects:
            self.objects[object_id].pinned |= pinned
            return
        self._make_room(blob.nbytes)
        self.clock += 1
        entry = StoredObject(blob, owner, pinned, last_use=self.clock)
        self.objects[object_id] = entry
        if self.used + blob.nbytes <= self.capacity:
            self.used += blob.nbytes
        else:
            entry.spilled = True
            self.spilled_bytes += blob.nbytes

    def remove(self, object_id: str) -> None:
        entry = self.objects.pop(object_id, None)
        if entry is None:
            return
        if entry.spilled:
            self.spilled_bytes -= entry.blob.nbytes
        else:
            self.used -= entry.blob.nbytes

    def _make_room(self, nbytes: int) -> None:
        if self.used + nbytes <= self.capacity:
            return
        by_age = sorted((e.last_use, oid) for oid, e in self.objects.items() if not e.spilled)
        for pinned_pass in (False, True):
            for _, oid in by_age:
                if self.used + nbytes <= self.capacity:
                    return
                entry = self.objects.get(oid)
                if entry is None or entry.spilled or entry.pinned != pinned_pass:
                    continue
                if entry.pinned:
                    entry.spilled = True
                    self.used -= entry.blob.nbytes
                    self.spilled_bytes += entry.blob.nbytes
                else:
                    self.remove(oid)

    def validate(self) -> None:
        in_memory = sum(e.blob.nbytes for e in self.objects.values() if not e.spilled)
        assert in_memory == self.used, "OS1: store accounting drifted"
        assert self.used <= self.capacity, "OS2: store over capacity"
