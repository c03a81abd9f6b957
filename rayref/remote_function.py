"""``@remote`` functions: ``f.remote(...)`` submits a task and returns ``ObjectRef``s."""
from __future__ import annotations

import hashlib

import cloudpickle

from rayref._private import invocation, options as opt, worker
from rayref.core import protocol as p


class RemoteFunction:
    def __init__(self, function, options: dict):
        self._function = function
        self._options = opt.validate(dict(options), opt.TASK_OPTIONS, "remote functions")
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        self._pickled: tuple[str, bytes] | None = None
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", self._name)
        self.__wrapped__ = function

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running '{self.__name__}()', "
                        f"try '{self.__name__}.remote()'.")

    def options(self, **overrides) -> RemoteFunction:
        opt.validate(overrides, opt.TASK_OPTIONS, "remote functions")
        clone = RemoteFunction.__new__(RemoteFunction)
        clone.__dict__.update(self.__dict__)
        clone._options = {**self._options, **overrides}
        return clone

    def _pickle(self) -> tuple[str, bytes]:
        if self._pickled is None:
            try:
                data = cloudpickle.dumps(self._function)
            except Exception as error:
                raise TypeError(f"Could not serialize the remote function {self._name}: {error}. A remote "
                                f"function must be picklable by cloudpickle; avoid capturing locks, sockets "
                                f"or open files in its closure.") from error
            self._pickled = (hashlib.sha1(data).hexdigest()[:16], data)
        return self._pickled

    def remote(self, *args, **kwargs):
        ctx = worker.current()
        o = self._options
        num_returns = o.get("num_returns", 1)
        function_id, function = self._pickle()
        blob, deps, keep = invocation.encode_args(ctx, self._name, args, kwargs)
        retry = o.get("retry_exceptions", False)
        spec = invocation.base_spec(
            ctx, kind=p.TaskKind.NORMAL, name=o.get("name") or self._name, args_blob=blob, deps=deps,
            num_returns=num_returns, function_id=function_id, function=function,
            resources=opt.task_resources(o), strategy=opt.strategy_of(o),
            max_retries=o.get("max_retries", ctx.cw.config.default_max_retries),
            retry_exceptions=retry if isinstance(retry, bool) else tuple(retry),
            env_vars=opt.env_vars_of(o))
        ctx.call(ctx.cw.submit_task, spec)
        del keep
        refs = invocation.return_refs(ctx, spec)
        return refs[0] if num_returns == 1 else (refs if num_returns else None)
