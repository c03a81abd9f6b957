"""A worker process: ``python -m transports.grpc.worker --node HOST:PORT --node-id ID --worker-id ID --session DIR``.

It attaches to its node and serves until that stream ends; then it exits (a worker never
outlives its node).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os

from rayref._private import worker
from transports.grpc.host import ProcessHost
from transports.grpc.node import read_token


class WorkerTransport:
    """What the API sees in a worker process: the process itself, connected to its node."""

    kind = "grpc"

    def __init__(self, host: ProcessHost):
        self.host = host

    def current(self) -> ProcessHost:
        return self.host

    def shutdown(self) -> None:
        raise RuntimeError("rayref.shutdown() is for drivers; a worker process stops with its node.")

    def context_info(self) -> dict:
        return {"transport": "grpc", "address": self.host.endpoint, "node_id": self.host.cw.node_id}


async def serve(host: ProcessHost) -> None:
    await host.attach()
    await host.reader


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="a rayref worker process")
    parser.add_argument("--node", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--session", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="(worker) %(message)s")
    host = ProcessHost(args.worker_id, args.node_id, args.node, read_token(args.session), is_driver=False)
    worker.set_transport(WorkerTransport(host))
    try:
        asyncio.run(serve(host))
    except ConnectionError as error:  # its node is gone before it could attach
        logging.warning("%s", error)
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
