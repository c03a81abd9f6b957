"""The reference table of one core worker: ownership, reference counts and borrowers.

Every object this process knows of has one ``Reference``. A process *holds* an object while
any of these is positive:

- ``local``: live ``ObjectRef`` instances in this process;
- ``submitted``: tasks this process submitted that take the object as an argument
  (top-level or nested), until they finish;
- ``contained_in``: live objects of this process whose value contains the reference.

The owner (the process that created the object) also keeps the set of ``borrowers``: other
processes that hold it. The owner frees an object when it holds it no more and has no
borrowers; a borrower tells the owner when it stops holding (``RemoveBorrower``).

A borrower becomes known to the owner in one of three ways, each ordered before the hold
that covered it ends (so an object is never freed while a borrower may still use it):

1. a worker that still holds a ref it got from its task's arguments reports it in its
   ``TaskReply``; the caller (still holding it through ``submitted``) registers it;
2. a worker whose return value contains a ref registers the caller as borrower before it
   releases its own hold;
3. any other deserialization (a ``get`` of a value containing refs) registers on the core
   worker's next entry, when the new ``ObjectRef`` is counted.

Invariant RC1: an owned object that is held, or has borrowers, is in the table.
Invariant RC2: counts are never negative.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rayref.core import protocol as p


@dataclass(slots=True, eq=False)
class Reference:
    object_id: str
    owner: str
    owned: bool
    local: int = 0
    submitted: int = 0
    contained_in: int = 0
    registered: bool = False
    borrowers: dict[str, None] = field(default_factory=dict)
    ready: bool = False
    blob: p.Blob | None = None
    nbytes: int = 0
    locations: list[str] = field(default_factory=list)
    contained: tuple[p.RefInfo, ...] = ()
    waiters: list = field(default_factory=list)
    status_subscribers: list[str] = field(default_factory=list)
    status_requested: bool = False
    pull_requested: bool = False
    actor_handle_of: str = ""

    def held(self) -> bool:
        return self.local > 0 or self.submitted > 0 or self.contained_in > 0


class ReferenceTable:
    def __init__(self, address: str, node_id: str, out: list):
        self.address = address
        self.node_id = node_id
        self.out = out
        self.refs: dict[str, Reference] = {}
        self.available: set[str] = set()
        """Ids whose value (or error) is in this process: ready, with its blob (RC4)."""
        self.computing: set[str] = set()
        """Ids this process owns and has not got yet (a task of its computes them, RC4)."""
        self.on_free = None

    def __contains__(self, object_id: str) -> bool:
        return object_id in self.refs

    def get(self, object_id: str) -> Reference | None:
        return self.refs.get(object_id)

    def own(self, object_id: str) -> Reference:
        ref = Reference(object_id, self.address, owned=True)
        self.refs[object_id] = ref
        self.available.discard(object_id)
        self.computing.add(object_id)
        return ref

    def note_state(self, ref: Reference) -> None:
        """Keep ``available`` and ``computing`` in step with ``ref``, whose value or location changed."""
        object_id = ref.object_id
        if ref.ready:
            self.computing.discard(object_id)
        if ref.ready and ref.blob is not None:
            self.available.add(object_id)
        else:
            self.available.discard(object_id)

    def _entry(self, info: p.RefInfo) -> Reference:
        ref = self.refs.get(info.object_id)
        if ref is None:
            ref = Reference(info.object_id, info.owner, owned=info.owner == self.address)
            self.refs[info.object_id] = ref
        return ref

    # ------------------------------------------------------------------ holds

    def add_local(self, info: p.RefInfo, register: bool) -> None:
        ref = self._entry(info)
        ref.local += 1
        if register and not ref.owned and not ref.registered:
            self._register(ref)

    def _register(self, ref: Reference) -> None:
        ref.registered = True
        self.out.append(p.Send(to=ref.owner, msg=p.AddBorrower(object_id=ref.object_id, borrower=self.address)))

    def remove_local(self, object_id: str) -> None:
        ref = self.refs.get(object_id)
        if ref is not None:
            ref.local -= 1
            self._maybe_release(ref)

    def add_submitted(self, infos) -> None:
        for info in infos:
            self._entry(info).submitted += 1

    def remove_submitted(self, infos) -> None:
        for info in infos:
            ref = self.refs.get(info.object_id)
            if ref is not None:
                ref.submitted -= 1
                self._maybe_release(ref)

    def add_contained(self, infos, registered: bool = False) -> None:
        for info in infos:
            ref = self._entry(info)
            ref.contained_in += 1
            ref.registered |= registered and not ref.owned

    def remove_contained(self, infos) -> None:
        for info in infos:
            ref = self.refs.get(info.object_id)
            if ref is not None:
                ref.contained_in -= 1
                self._maybe_release(ref)

    # ------------------------------------------------------------------ borrowers

    def add_borrower(self, object_id: str, borrower: str) -> None:
        ref = self.refs.get(object_id)
        if ref is not None and ref.owned and borrower != self.address:
            ref.borrowers[borrower] = None

    def remove_borrower(self, object_id: str, borrower: str) -> None:
        ref = self.refs.get(object_id)
        if ref is not None and ref.owned:
            ref.borrowers.pop(borrower, None)
            self._maybe_release(ref)

    def unregistered_borrows(self) -> list[p.RefInfo]:
        """Borrowed refs this process holds that no owner knows of yet; marks them known."""
        found = []
        for ref in self.refs.values():
            if not ref.owned and not ref.registered and ref.held():
                ref.registered = True
                found.append(p.RefInfo(object_id=ref.object_id, owner=ref.owner))
        return found

    # ------------------------------------------------------------------ release

    def _maybe_release(self, ref: Reference) -> None:
        if ref.held() or ref.borrowers or ref.waiters:
            return
        del self.refs[ref.object_id]
        self.available.discard(ref.object_id)
        self.computing.discard(ref.object_id)
        if ref.owned:
            self._free(ref)
        elif ref.registered:
            self.out.append(p.Send(to=ref.owner, msg=p.RemoveBorrower(object_id=ref.object_id, borrower=self.address)))
        self.remove_contained(ref.contained)

    def _free(self, ref: Reference) -> None:
        for node in ref.locations:
            self.out.append(p.Send(to=node, msg=p.FreeObjects(object_ids=(ref.object_id,))))
        if self.on_free is not None:
            self.on_free(ref)

    def lose_node(self, node_id: str) -> list[tuple[Reference, str]]:
        """Forget a dead node as a location and its processes as borrowers. Returns the refs left
        without a value, with the error: ``OwnerDiedError`` for borrowed refs whose owner was on
        it, ``ObjectLostError`` for refs whose only copy was there (no lineage reconstruction)."""
        on_node = node_id + "."
        lost, unborrowed = [], []
        for ref in self.refs.values():
            for borrower in [b for b in ref.borrowers if b.startswith(on_node)]:
                del ref.borrowers[borrower]
                unborrowed.append(ref)
            was_there = node_id in ref.locations
            if was_there:
                ref.locations.remove(node_id)
            if ref.blob is not None:
                continue
            if not ref.owned and ref.owner.startswith(on_node):
                lost.append((ref, "OwnerDiedError"))
            elif was_there and not ref.locations:
                lost.append((ref, "ObjectLostError"))
        for ref in unborrowed:
            if ref.object_id in self.refs:
                self._maybe_release(ref)
        return lost

    def forget_waiter(self, ref: Reference, waiter) -> None:
        waiters = ref.waiters
        if waiters and waiters[-1] is waiter:  # the newest waiter, as a thread that waits in a loop is
            waiters.pop()
        elif waiter in waiters:
            waiters.remove(waiter)
        else:
            return
        if not waiters:
            self._maybe_release(ref)

    def validate(self) -> None:
        for ref in self.refs.values():
            assert ref.local >= 0 and ref.submitted >= 0 and ref.contained_in >= 0, \
                f"RC2: negative count on {ref.object_id}"
            assert (ref.object_id in self.available) == (ref.ready and ref.blob is not None), \
                f"RC4: 'available' is wrong about {ref.object_id}"
            assert ref.object_id not in self.computing or (ref.owned and not ref.ready), \
                f"RC4: 'computing' is wrong about {ref.object_id}"
        assert self.available <= self.refs.keys() and self.computing <= self.refs.keys(), \
            "RC4: an id the table no longer has is still marked available or computing"
