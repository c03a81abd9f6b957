"""A node's object store: bytes accounting, pinning, eviction and spilling, as in Ray 2.

Primary copies (put by their creator, or a task's return) are pinned until their owner frees
them. Copies pulled from other nodes are secondary: they are evicted, least recently used
first, whenever room is needed, and a secondary copy that cannot fit even then is not kept
(the node still hands it to the processes that asked for it).

When the pinned objects alone would exceed the capacity, the least recently used ones are
*spilled*: they stay readable but no longer count against memory. ``add`` returns what it
spilled, and the node manager tells its transport (``SpillObject``): the gRPC node moves the
object's shared memory to a file of the session's spill folder, the sim only keeps the books.
A spilled object is never brought back (readers map the file; Ray restores it into memory
first). A primary larger than the whole store is spilled on arrival, where Ray's fallback
allocator puts it on disk too. So a ``put`` never fails for room, as in Ray with spilling on.

The node holding a primary remembers the nodes it sent copies to (``copies``), to free them
with it.

Invariant OS1: ``used`` equals the bytes of the in-memory (unspilled) entries.
Invariant OS2: ``used <= capacity`` after every operation.
Invariant OS3: only pinned entries are spilled (secondary copies are evicted or not kept).
Invariant OS5: ``owned`` lists exactly the primaries (pinned, with an owner), each under its owner.

When a primary's owner dies (its process, or its node), nobody is left to free it, so the node
manager frees it (``owned_by``), as Ray unpins the objects of a dead owner.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rayref.core.protocol import Blob


@dataclass(slots=True)
class StoredObject:
    blob: Blob
    owner: str
    pinned: bool
    spilled: bool = False
    last_use: int = 0
    copies: list[str] = field(default_factory=list)
    """Nodes this node sent a copy of the object to (recorded for primaries, to free them too)."""


class ObjectStore:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.objects: dict[str, StoredObject] = {}
        self.clock = 0
        self.spilled_bytes = 0
        self.owned: dict[str, dict[str, None]] = {}
        """owner -> its primaries here, in arrival order (found when the owner dies)."""

    def __contains__(self, object_id: str) -> bool:
        return object_id in self.objects

    def get(self, object_id: str) -> Blob | None:
        entry = self.objects.get(object_id)
        if entry is None:
            return None
        self.clock += 1
        entry.last_use = self.clock
        return entry.blob

    def add(self, object_id: str, blob: Blob, owner: str, pinned: bool) -> list[str]:
        """Keep ``blob``; the ids spilled to make room, in order (``object_id`` itself if it cannot fit)."""
        entry = self.objects.get(object_id)
        if entry is not None:
            if pinned and not entry.pinned:  # a secondary copy becomes the primary
                entry.pinned, entry.owner = True, owner
                if owner:
                    self.owned.setdefault(owner, {})[object_id] = None
            return []
        nbytes = blob.nbytes
        can_fit = nbytes <= self.capacity
        if can_fit:
            self._evict(nbytes)
        if not pinned and not self._has_room(nbytes):
            return []
        spilled = self._spill_for(nbytes) if can_fit else []
        self.clock += 1
        self.objects[object_id] = StoredObject(blob, owner, pinned, last_use=self.clock)
        if pinned and owner:
            self.owned.setdefault(owner, {})[object_id] = None
        self.used += nbytes
        if self.used > self.capacity:
            self._spill(object_id)
            spilled.append(object_id)
        return spilled

    def remove(self, object_id: str) -> StoredObject | None:
        entry = self.objects.pop(object_id, None)
        if entry is None:
            return None
        owned = self.owned.get(entry.owner)
        if owned is not None:
            owned.pop(object_id, None)
            if not owned:
                del self.owned[entry.owner]
        if entry.spilled:
            self.spilled_bytes -= entry.blob.nbytes
        else:
            self.used -= entry.blob.nbytes
        return entry

    def replace_spilled(self, object_id: str, blob: Blob) -> None:
        """The transport moved a spilled object out of memory: ``blob`` is how it reads now."""
        entry = self.objects.get(object_id)
        if entry is not None and entry.spilled and blob.nbytes == entry.blob.nbytes:
            entry.blob = blob

    def owned_by(self, dead) -> list[str]:
        """The primaries here whose owner ``dead(owner)`` says has died, in arrival order per owner."""
        return [object_id for owner, owned in self.owned.items() if dead(owner) for object_id in owned]

    def note_copy(self, object_id: str, node_id: str) -> None:
        entry = self.objects.get(object_id)
        if entry is not None and entry.pinned and node_id not in entry.copies:
            entry.copies.append(node_id)

    def _has_room(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.capacity

    def _by_age(self, pinned: bool) -> list[str]:
        found = [(e.last_use, oid) for oid, e in self.objects.items() if e.pinned == pinned and not e.spilled]
        return [oid for _, oid in sorted(found)]

    def _evict(self, nbytes: int) -> None:
        for object_id in self._by_age(pinned=False):
            if self._has_room(nbytes):
                return
            self.remove(object_id)

    def _spill_for(self, nbytes: int) -> list[str]:
        spilled = []
        for object_id in self._by_age(pinned=True):
            if self._has_room(nbytes):
                break
            self._spill(object_id)
            spilled.append(object_id)
        return spilled

    def _spill(self, object_id: str) -> None:
        entry = self.objects[object_id]
        entry.spilled = True
        self.used -= entry.blob.nbytes
        self.spilled_bytes += entry.blob.nbytes

    def validate(self) -> None:
        in_memory = sum(e.blob.nbytes for e in self.objects.values() if not e.spilled)
        assert in_memory == self.used, "OS1: store accounting drifted"
        assert self.used <= self.capacity, "OS2: store over capacity"
        assert all(e.pinned for e in self.objects.values() if e.spilled), "OS3: a secondary copy was spilled"
        assert all(self.objects[o].owner == owner for owner, owned in self.owned.items() for o in owned) and \
            sum(map(len, self.owned.values())) == sum(e.pinned and bool(e.owner) for e in self.objects.values()), \
            "OS5: the primaries by owner disagree with the store"
