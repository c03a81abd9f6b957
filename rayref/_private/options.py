"""The valid ``@remote`` / ``.options()`` keywords, as a declarative table (as Ray keeps it).

Each option names the types it accepts and a check; anything not in the table is an error
that lists the valid keywords. ``task_resources`` and ``actor_resources`` turn validated
options into the engine's ``Resources``; ``strategy_of`` into its ``SchedulingStrategy``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rayref.core.protocol import SchedulingStrategy
from rayref.core.resources import Resources
from rayref.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@dataclass(frozen=True)
class Option:
    types: tuple
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""


def _nonneg(v) -> bool:
    return v is None or v >= 0


def _retries(v) -> bool:
    return v is None or v >= -1


def _resources(v) -> bool:
    return v is None or (all(isinstance(k, str) for k in v) and all(
        isinstance(x, (int, float)) and x >= 0 for x in v.values()))


def _retry_exceptions(v) -> bool:
    return isinstance(v, bool) or all(isinstance(e, type) and issubclass(e, BaseException) for e in v)


def _strategy(v) -> bool:
    return v is None or v in ("DEFAULT", "SPREAD") or isinstance(v, NodeAffinitySchedulingStrategy)


def _runtime_env(v) -> bool:
    if v is None:
        return True
    unknown = set(v) - {"env_vars"}
    if unknown:
        raise ValueError(f"runtime_env keys {sorted(unknown)} are not supported by rayref; only 'env_vars' is "
                         f"(install packages in the cluster's environment instead).")
    env = v.get("env_vars", {})
    return isinstance(env, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in env.items())


NUMBER = (int, float)
COMMON = {
    "num_cpus": Option(NUMBER + (type(None),), _nonneg, "a number >= 0"),
    "num_gpus": Option(NUMBER + (type(None),), _nonneg, "a number >= 0"),
    "memory": Option(NUMBER + (type(None),), _nonneg, "a number of bytes >= 0"),
    "resources": Option((dict, type(None)), _resources, "a dict of resource name -> amount >= 0"),
    "runtime_env": Option((dict, type(None)), _runtime_env, "a dict {'env_vars': {str: str}}"),
    "scheduling_strategy": Option((str, NodeAffinitySchedulingStrategy, type(None)), _strategy,
                                  "'DEFAULT', 'SPREAD' or a NodeAffinitySchedulingStrategy"),
    "name": Option((str, type(None)), rule="a string"),
}
TASK_OPTIONS = {
    **COMMON,
    "num_returns": Option((int,), lambda v: v >= 0, "an int >= 0"),
    "max_retries": Option((int,), _retries, "an int >= -1 (-1: retry forever)"),
    "retry_exceptions": Option((bool, list, tuple), _retry_exceptions, "a bool or a list of exception classes"),
}
ACTOR_OPTIONS = {
    **COMMON,
    "max_restarts": Option((int,), _retries, "an int >= -1 (-1: restart forever)"),
    "max_task_retries": Option((int,), _retries, "an int >= -1 (-1: retry forever)"),
    "max_concurrency": Option((int, type(None)), lambda v: v is None or v >= 1, "an int >= 1"),
    "namespace": Option((str, type(None)), rule="a string"),
    "lifetime": Option((str, type(None)), lambda v: v in (None, "detached", "non_detached"),
                       "None, 'detached' or 'non_detached'"),
    "get_if_exists": Option((bool,), rule="a bool"),
}
METHOD_OPTIONS = {"num_returns": TASK_OPTIONS["num_returns"], "name": COMMON["name"]}


def validate(options: dict, table: dict, what: str) -> dict:
    for key, value in options.items():
        option = table.get(key)
        if option is None:
            raise ValueError(f"Invalid option keyword {key!r} for {what}. Valid ones are: {', '.join(sorted(table))}.")
        if isinstance(value, bool) and bool not in option.types and int in option.types:
            raise TypeError(f"Option {key!r} for {what} must be {option.rule}, not a bool.")
        if not isinstance(value, option.types):
            raise TypeError(f"Option {key!r} for {what} must be {option.rule}, got {type(value).__name__} {value!r}.")
        if not option.check(value):
            raise ValueError(f"Option {key!r} for {what} must be {option.rule}, got {value!r}.")
    resources = options.get("resources") or {}
    for reserved in ("CPU", "GPU", "memory"):
        if reserved in resources:
            raise ValueError(f"Use the 'num_cpus', 'num_gpus' and 'memory' keywords instead of {reserved!r} "
                             f"in 'resources'.")
    return options


def _resources_of(options: dict, default_cpus: float) -> Resources:
    amounts = dict(options.get("resources") or {})
    cpus = options.get("num_cpus")
    amounts["CPU"] = default_cpus if cpus is None else cpus
    amounts["GPU"] = options.get("num_gpus") or 0
    amounts["memory"] = options.get("memory") or 0
    gpus = amounts["GPU"]
    if gpus > 1 and gpus != int(gpus):
        raise ValueError(f"num_gpus={gpus}: a request above 1 GPU must be a whole number.")
    return Resources(amounts)


def task_resources(options: dict) -> Resources:
    return _resources_of(options, 1)


def actor_resources(options: dict) -> Resources:
    """A default actor takes no CPU (Ray: none to run, though one to be placed; see README)."""
    return _resources_of(options, 0)


def strategy_of(options: dict) -> SchedulingStrategy:
    value = options.get("scheduling_strategy")
    if isinstance(value, NodeAffinitySchedulingStrategy):
        return SchedulingStrategy(kind="NODE_AFFINITY", node_id=value.node_id, soft=value.soft)
    return SchedulingStrategy(kind=value or "DEFAULT")


def env_vars_of(options: dict) -> tuple[tuple[str, str], ...]:
    env = (options.get("runtime_env") or {}).get("env_vars") or {}
    return tuple(sorted(env.items()))
