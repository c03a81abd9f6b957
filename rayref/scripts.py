"""The ``rayref`` command: start, inspect and stop a cluster of real processes on this machine.

    rayref start --head [--port P] [--num-cpus N] [--num-gpus G] [--resources JSON]
    rayref start --address HOST:PORT [--num-cpus N] ...     # another node joining that cluster
                                                            # (on another machine: with RAYREF_TOKEN set)
    rayref status [--address HOST:PORT]
    rayref stop
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-cpus", type=float)
    parser.add_argument("--num-gpus", type=float)
    parser.add_argument("--resources", default="{}", help='custom resources as JSON, e.g. \'{"TPU": 4}\'')
    parser.add_argument("--object-store-memory", type=int)
    parser.add_argument("--memory", type=int)


def start(args) -> int:
    from transports.grpc.session import Session
    if args.host in ("0.0.0.0", "::", ""):
        print(f"--host={args.host!r}: a node binds and announces this one address, and the other nodes dial "
              f"it; give this machine's address that they can reach (default 127.0.0.1: this machine only).",
              file=sys.stderr)
        return 2
    options = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "resources": json.loads(args.resources),
               "object_store_memory": args.object_store_memory, "memory": args.memory}
    if args.head:
        session = Session.create()
        head = session.start_node(port=args.port, host=args.host, log_to_file=True, **options)
        session.mark_latest()
        print(f"Started a rayref head node at {head['endpoint']} (node {head['node_id']}).\n"
              f"  Connect a program with rayref.init(address=\"auto\") or rayref.init(address=\"{head['endpoint']}\").\n"
              f"  Add a node: rayref start --address={head['endpoint']} --num-cpus=8\n"
              f"  On another machine: RAYREF_TOKEN=<the contents of {session.path}/token> "
              f"rayref start --address={head['endpoint']} --host=<that machine's address>\n"
              f"  Stop everything: rayref stop")
        return 0
    if not args.address:
        print("rayref start needs --head (a new cluster) or --address=HOST:PORT (join one).", file=sys.stderr)
        return 2
    session = Session.for_address(args.address) or _join(args.address)
    if session is None:
        return 1
    node = session.start_node(head=session.head(), host=args.host, log_to_file=True, **options)
    print(f"Started a rayref node at {node['endpoint']} (node {node['node_id']}), joined {args.address}.")
    return 0


def _join(address: str):
    """A session on this machine for the cluster whose head serves at ``address`` (started on
    another machine), with the token in ``RAYREF_TOKEN``; None (and why, printed) if not."""
    from transports.grpc.client import describe
    from transports.grpc.session import Session
    token = os.environ.get("RAYREF_TOKEN", "")
    if not token:
        print(f"No rayref cluster with its head at {address} was started on this machine. To join a cluster "
              f"started on another machine, set RAYREF_TOKEN to its token (the 'token' file of the head's "
              f"session directory, which `rayref start --head` printed).", file=sys.stderr)
        return None
    try:
        node = describe(address, token)
    except ConnectionError as error:
        print(error, file=sys.stderr)
        return None
    session = Session.join({"node_id": node["head_id"], "endpoint": node["head_endpoint"]}, token)
    session.mark_latest()
    return session


def status(args) -> int:
    import rayref
    try:
        rayref.init(address=args.address or "auto")
    except ConnectionError as error:
        print(error, file=sys.stderr)
        return 1
    try:
        available = {n["NodeID"]: n for n in rayref.nodes()}
        totals, free = rayref.cluster_resources(), rayref.available_resources()
    finally:
        rayref.shutdown()
    print(f"{len(available)} node(s)")
    for node_id, node in available.items():
        kind = "head" if node["IsHead"] else "node"
        cpus, gpus = node["Resources"].get("CPU", 0), node["Resources"].get("GPU", 0)
        print(f"  {node_id}  {kind}  {node['NodeManagerAddress']}  CPU {cpus:g}  GPU {gpus:g}  "
              f"{'alive' if node['Alive'] else 'dead'}")
    print("Resources (used / total):")
    for name in sorted(totals):
        if not name.startswith("node:"):
            used, total = totals[name] - free.get(name, 0), totals[name]
            if name in ("memory", "object_store_memory"):
                print(f"  {name}: {used / 2**30:.2f} / {total / 2**30:.2f} GiB")
            else:
                print(f"  {name}: {used:g} / {total:g}")
    return 0


def stop(args) -> int:
    from transports.grpc.session import Session
    session = Session.latest()
    if session is None:
        print("No rayref cluster is running on this machine.")
        return 0
    session.stop()
    print(f"Stopped the rayref cluster of {session.path}.")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rayref", description="Run a rayref cluster of real processes.")
    commands = parser.add_subparsers(dest="command", required=True)
    p_start = commands.add_parser("start", help="start a head node, or a node joining one")
    p_start.add_argument("--head", action="store_true")
    p_start.add_argument("--address", default="")
    p_start.add_argument("--port", type=int, default=0)
    p_start.add_argument("--host", default="127.0.0.1",
                         help="the address this node binds and announces to the others (default: loopback only)")
    _node_options(p_start)
    p_start.set_defaults(run=start)
    p_status = commands.add_parser("status", help="nodes, resources, usage")
    p_status.add_argument("--address", default="")
    p_status.set_defaults(run=status)
    commands.add_parser("stop", help="stop the cluster started on this machine").set_defaults(run=stop)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
