"""Small builders shared by the pure engine tests: specs, nodes, and command filters."""
from __future__ import annotations

import random

from rayref.core import protocol as p
from rayref.core.config import EngineConfig
from rayref.core.node_manager import NodeManager
from rayref.core.resources import Resources

DRIVER = "node-1.driver"


def spec(task_id: str = "t1", *, owner: str = DRIVER, owner_node: str = "node-1", name: str = "f",
         kind: p.TaskKind = p.TaskKind.NORMAL, resources: dict | None = None,
         strategy: p.SchedulingStrategy | None = None, num_returns: int = 1, **fields) -> p.TaskSpec:
    res = Resources({"CPU": 1} if resources is None else resources)
    return p.TaskSpec(task_id=task_id, kind=kind, name=name, owner=owner, owner_node=owner_node,
                      function_id="fn-" + name, args=p.Blob(data=b""),
                      return_ids=tuple(f"{task_id}.r{i}" for i in range(num_returns)),
                      resources=res, strategy=strategy or p.SchedulingStrategy(), **fields)


def lease_request(lease_id: str, *, requester: str = DRIVER, resources: dict | None = None,
                  strategy: p.SchedulingStrategy | None = None, **kwargs) -> p.RequestWorkerLease:
    return p.RequestWorkerLease(lease_id=lease_id, requester=requester,
                                spec=spec("t-" + lease_id, resources=resources, strategy=strategy), **kwargs)


def node_info(node_id: str, total: dict, available: dict | None = None, alive: bool = True) -> p.NodeInfo:
    return p.NodeInfo(node_id=node_id, address=node_id, total=Resources(total),
                      available=Resources(total if available is None else available), alive=alive)


def make_nm(node_id: str = "node-1", *, seed: int = 0, prestart: bool = True, store: int = 10_000,
            config: EngineConfig | None = None, **total) -> tuple[NodeManager, list]:
    """A started node manager with ``total`` resources, and the commands ``start()`` gave."""
    config = config or EngineConfig(prestart_workers=prestart)
    nm = NodeManager(node_id=node_id, total=Resources(total), config=config, rng=random.Random(seed),
                     object_store_memory=store)
    return nm, nm.start()


def register_started(nm: NodeManager, commands: list, now: float = 0.0) -> list:
    """Register every worker that ``commands`` asked to start; returns the commands that gave."""
    out = []
    for cmd in commands:
        if isinstance(cmd, p.StartWorker):
            out += nm.handle(p.WorkerRegistered(worker_id=cmd.worker_id, node_id=nm.node_id), now)
            nm.validate()
    return out


def sends(commands, kind=None, to: str | None = None) -> list:
    """The messages of the ``Send`` commands, optionally only of one type / to one address."""
    return [c.msg for c in commands if isinstance(c, p.Send)
            and (kind is None or isinstance(c.msg, kind)) and (to is None or c.to == to)]


def sends_to(commands, kind) -> list[tuple[str, p.Message]]:
    return [(c.to, c.msg) for c in commands if isinstance(c, p.Send) and isinstance(c.msg, kind)]


def of_type(commands, kind) -> list:
    return [c for c in commands if isinstance(c, kind)]


def hold(cw, info: p.RefInfo, register: bool = True) -> None:
    """A new ObjectRef of ``info`` in ``cw``'s process, applied at once (as the next entry would)."""
    cw.add_local_ref(info, register)
    cw.release_dropped()
