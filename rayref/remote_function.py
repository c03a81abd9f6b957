"""``@remote`` functions: ``f.remote(...)`` submits a task and returns ``ObjectRef``s."""
from __future__ import annotations

from rayref._private import invocation, options as opt, worker
from rayref._private.remote_base import Remote
from rayref.core import protocol as p


class RemoteFunction(Remote):
    TABLE = opt.TASK_OPTIONS
    WHAT = "remote functions"

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote functions cannot be called directly. Instead of running '{self.__name__}()', "
                        f"try '{self.__name__}.remote()'.")

    def remote(self, *args, **kwargs):
        ctx = worker.current()
        o = self._options
        num_returns = o.get("num_returns", 1)
        function_id, function = self._pickle()
        blob, deps, keep = invocation.encode_args(ctx, self._name, args, kwargs)
        spec = invocation.base_spec(
            ctx, kind=p.TaskKind.NORMAL, name=o.get("name") or self._name, args_blob=blob, deps=deps,
            num_returns=num_returns, function_id=function_id, function=function,
            max_retries=o.get("max_retries", ctx.cw.config.default_max_retries), **self._spec_fields())
        ctx.call(ctx.cw.submit_task, spec)
        del keep
        refs = invocation.return_refs(ctx, spec)
        return refs[0] if num_returns == 1 else (refs if num_returns else None)

    def _spec_fields(self) -> dict:
        """The spec's fields that follow from the options alone, worked out once (options never change:
        ``.options()`` makes a new object)."""
        fields = self._fields
        if fields is None:
            o = self._options
            retry = o.get("retry_exceptions", False)
            fields = self._fields = {
                "resources": opt.task_resources(o), "strategy": opt.strategy_of(o), "env_vars": opt.env_vars_of(o),
                "retry_exceptions": retry if isinstance(retry, bool) else tuple(retry)}
        return fields
