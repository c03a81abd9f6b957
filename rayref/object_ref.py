"""``ObjectRef``: a future for a value in the cluster, owned by the process that made it."""
from __future__ import annotations

from rayref._private import serialization, worker
from rayref.core.protocol import RefInfo


class ObjectRef:
    __slots__ = ("_id", "_owner", "_cw", "_info", "__weakref__")

    def __init__(self, object_id: str, owner: str, core_worker=None, *, register: bool = True, counted: bool = False):
        self._id = object_id
        self._owner = owner
        self._cw = core_worker
        self._info = RefInfo(object_id=object_id, owner=owner)
        if core_worker is not None and not counted:
            core_worker.add_local_ref(self._info, register)

    def __del__(self):
        cw = self._cw
        if cw is not None:
            cw.pending_decrefs.append(self._id)

    def info(self) -> RefInfo:
        return self._info

    def hex(self) -> str:
        return self._id

    def binary(self) -> bytes:
        return self._id.encode()

    def owner_address(self) -> str:
        return self._owner

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __reduce__(self):
        serialization.note_contained(self.info())
        return (_rebuild_ref, (self._id, self._owner))

    def __await__(self):
        from rayref import api
        return api._await_ref(self).__await__()

    def __bool__(self) -> bool:
        return True


def _rebuild_ref(object_id: str, owner: str) -> ObjectRef:
    ctx = worker.current_or_none()
    cw = ctx.cw if ctx is not None else None
    return ObjectRef(object_id, owner, cw, register=worker.register_eagerly.get())
