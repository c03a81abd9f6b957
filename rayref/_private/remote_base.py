"""What ``@remote`` functions and classes share: validated options, ``.options()``, pickling once."""
from __future__ import annotations

import hashlib

import cloudpickle

from rayref._private import options as opt


class Remote:
    """A function or class made remote. Subclasses set ``TABLE`` and ``WHAT`` (for messages)."""

    TABLE: dict = {}
    WHAT = ""

    def __init__(self, target, options: dict):
        self._target = target
        self._options = opt.validate(dict(options), self.TABLE, self.WHAT)
        self._name = getattr(target, "__qualname__", getattr(target, "__name__", "remote"))
        self._pickled: tuple[str, bytes] | None = None
        self._fields: dict | None = None
        """What a subclass works out from the options alone, once (``.options()`` starts it anew)."""
        self.__doc__ = target.__doc__
        self.__name__ = getattr(target, "__name__", self._name)
        self.__wrapped__ = target

    def options(self, **overrides):
        """A copy with these options changed (validated like the decorator's)."""
        opt.validate(overrides, self.TABLE, self.WHAT)
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._options = {**self._options, **overrides}
        clone._fields = None
        return clone

    def _pickle(self) -> tuple[str, bytes]:
        """(content id, cloudpickle) of the target, made once."""
        if self._pickled is None:
            try:
                data = cloudpickle.dumps(self._target)
            except Exception as error:
                raise TypeError(f"Could not serialize the {self.WHAT[:-1]} {self._name}: {error}. It must be "
                                f"picklable by cloudpickle; avoid capturing locks, sockets or open files.") from error
            self._pickled = (hashlib.sha1(data).hexdigest()[:16], data)
        return self._pickled
