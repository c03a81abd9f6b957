"""Resource quantities and GPU instances, in fixed point.

Ray keeps resource amounts as fixed-point integers so that ten tasks of ``num_cpus=0.1``
give back exactly one CPU; we do the same with four decimal places. ``Resources`` is an
immutable, hashable bag (it is part of a task's scheduling key). ``GpuInstances`` assigns
concrete GPU indices: a whole-number request takes that many free GPUs, a fractional one
packs into a single GPU that has room, first fit by index, as Ray does.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

SCALE = 10_000
PREDEFINED = ("CPU", "GPU", "memory", "object_store_memory")


def to_fixed(amount: float) -> int:
    return int(round(float(amount) * SCALE))


class Resources:
    """An immutable bag of named resource amounts; zero amounts are dropped."""

    __slots__ = ("_raw", "_hash")

    def __init__(self, amounts: Mapping[str, float] | None = None):
        raw = {k: to_fixed(v) for k, v in (amounts or {}).items()}
        self._set(raw)

    @classmethod
    def from_raw(cls, raw: Mapping[str, int]) -> Resources:
        obj = cls.__new__(cls)
        obj._set(raw)
        return obj

    def _set(self, raw: Mapping[str, int]) -> None:
        self._raw = {k: raw[k] for k in sorted(raw) if raw[k] != 0}
        self._hash = hash(tuple(self._raw.items()))

    def raw(self, name: str) -> int:
        return self._raw.get(name, 0)

    def get(self, name: str) -> float:
        return self._raw.get(name, 0) / SCALE

    def names(self) -> Iterable[str]:
        return self._raw.keys()

    def items_raw(self) -> Iterable[tuple[str, int]]:
        return self._raw.items()

    def to_dict(self) -> dict[str, float]:
        return {k: v / SCALE for k, v in self._raw.items()}

    def is_empty(self) -> bool:
        return not self._raw

    def fits_in(self, other: Resources) -> bool:
        """True if every amount here is available in ``other``."""
        have = other._raw
        for name, amount in self._raw.items():
            if have.get(name, 0) < amount:
                return False
        return True

    def __add__(self, other: Resources) -> Resources:
        raw = dict(self._raw)
        for k, v in other._raw.items():
            raw[k] = raw.get(k, 0) + v
        return Resources.from_raw(raw)

    def __sub__(self, other: Resources) -> Resources:
        raw = dict(self._raw)
        for k, v in other._raw.items():
            raw[k] = raw.get(k, 0) - v
        return Resources.from_raw(raw)

    def only(self, names: Iterable[str]) -> Resources:
        return Resources.from_raw({k: v for k, v in self._raw.items() if k in names})

    def utilization(self, total: Resources) -> float:
        """The most-used fraction of any resource in ``total`` (self is what is available)."""
        worst = 0.0
        for k, t in total._raw.items():
            if t > 0 and not k.startswith("node:"):
                worst = max(worst, 1.0 - self._raw.get(k, 0) / t)
        return worst

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resources) and self._raw == other._raw

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Resources({self.to_dict()!r})"

    def __reduce__(self):
        return (Resources.from_raw, (self._raw,))


class GpuInstances:
    """Which GPU indices of a node are free, and by how much (fixed point, 1 GPU = SCALE)."""

    def __init__(self, count: int):
        self.free = [SCALE] * count

    def allocate(self, amount: int) -> tuple[int, ...] | None:
        if amount <= 0:
            return ()
        if amount < SCALE:
            for index, free in enumerate(self.free):
                if free >= amount:
                    self.free[index] -= amount
                    return (index,)
            return None
        whole = [i for i, free in enumerate(self.free) if free == SCALE]
        need = -(-amount // SCALE)
        if len(whole) < need:
            return None
        for index in whole[:need]:
            self.free[index] = 0
        return tuple(whole[:need])

    def release(self, ids: tuple[int, ...], amount: int) -> None:
        if amount < SCALE:
            for index in ids:
                self.free[index] += amount
        else:
            for index in ids:
                self.free[index] = SCALE

    def total_free(self) -> int:
        return sum(self.free)
