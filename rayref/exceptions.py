"""Ray's exception hierarchy, with Ray's names.

A task's own exception is stored as its result and raised by ``get`` as a ``RayTaskError``
that is *also* an instance of the user's exception class, so ``except ValueError`` works
across the ``.remote()`` boundary. Errors the system produces (a crashed worker, a dead actor,
a cancelled task) are raised as themselves.
"""
from __future__ import annotations


class RayError(Exception):
    """Base of every error rayref raises on behalf of the cluster."""


class RaySystemError(RayError):
    pass


class RayTaskError(RayError):
    """A task raised an exception; ``cause`` is that exception."""

    def __init__(self, function_name: str = "", traceback_str: str = "", cause: BaseException | None = None,
                 pid: int = 0, node_id: str = ""):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node_id = node_id
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"ray::{self.function_name}() (pid={self.pid}, node={self.node_id})"
        return f"{head}\n{self.traceback_str}".rstrip()

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (RayTaskError, (self.function_name, self.traceback_str, self.cause, self.pid, self.node_id))

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of both RayTaskError and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, RayTaskError) or not _subclassable(cause_cls):
            return self
        name = f"RayTaskError({cause_cls.__name__})"
        cls = _DUAL_CLASSES.get(cause_cls)
        if cls is None:
            cls = type(name, (RayTaskError, cause_cls), {
                "__init__": lambda s, *a: None,
                "__str__": RayTaskError.__str__,
                "__reduce__": lambda s: (_rebuild_task_error, (s.function_name, s.traceback_str, s.cause, s.pid, s.node_id)),
                "__getattr__": lambda s, attr: getattr(s.cause, attr),
            })
            _DUAL_CLASSES[cause_cls] = cls
        err = cls.__new__(cls)
        err.function_name, err.traceback_str, err.cause = self.function_name, self.traceback_str, self.cause
        err.pid, err.node_id = self.pid, self.node_id
        err.args = (self._message(),)
        return err


_DUAL_CLASSES: dict = {}


def _rebuild_task_error(*args) -> RayTaskError:
    return RayTaskError(*args).as_instanceof_cause()


def _subclassable(cls: type) -> bool:
    try:
        type("probe", (RayTaskError, cls), {})
        return True
    except TypeError:
        return False


class TaskCancelledError(RayError):
    pass


class GetTimeoutError(RayError, TimeoutError):
    pass


RayTimeoutError = GetTimeoutError  # the name older Ray documents use


class RayActorError(RayError):
    pass


class ActorDiedError(RayActorError):
    pass


class ActorUnavailableError(RayActorError):
    pass


class WorkerCrashedError(RayError):
    pass


class NodeDiedError(RayError):
    """A task failed because the node it ran on died (Ray 2.x: not a WorkerCrashedError)."""


class ObjectLostError(RayError):
    pass


class OwnerDiedError(ObjectLostError):
    pass


class ReferenceCountingAssertionError(ObjectLostError):
    pass


class ObjectStoreFullError(RayError):
    pass


class TaskUnschedulableError(RayError):
    pass


class ActorUnschedulableError(RayError):
    pass


class NoProgressError(RayError):
    """sim only: the driver waits for something that can never happen (the cluster is idle)."""


def from_system_error(kind: str, text: str) -> RayError:
    cls = globals().get(kind)
    if not (isinstance(cls, type) and issubclass(cls, RayError)):
        cls = RaySystemError
    return cls(text)
