"""rayref: Ray Core's programming model (tasks, actors, objects) as a reference implementation.

``import rayref as ray`` and use it as Ray: the same names, the same semantics, over a
simulated cluster (``transport="sim"``, deterministic by seed) or real processes.
"""
from rayref import exceptions
from rayref.actor import ActorClass, ActorHandle, method
from rayref.api import (available_resources, cancel, cluster_resources, get, get_actor, get_gpu_ids, init,
                        is_initialized, kill, nodes, put, remote, shutdown, wait)
from rayref.object_ref import ObjectRef
from rayref.runtime_context import get_runtime_context

__version__ = "0.1.0"
__all__ = ["ActorClass", "ActorHandle", "ObjectRef", "available_resources", "cancel", "cluster_resources",
           "exceptions", "get", "get_actor", "get_gpu_ids", "get_runtime_context", "init", "is_initialized",
           "kill", "method", "nodes", "put", "remote", "shutdown", "wait"]
