"""The gRPC transport: the engine as real processes (head, node managers, workers, driver).

``node`` is a node process, ``host`` a worker or driver process, ``session`` a cluster's files
on this machine, ``client`` the driver's side, ``wire`` what travels, ``shm`` large objects in
shared memory; the README's "Real processes" section says what works and what is missing.

gRPC's core reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported, so it is set here,
before any module of this package imports it (and every process this one starts inherits it).
grpcio's EventEngine client and listener cost about twice the CPU per message of its older
I/O manager in Python on this kind of machine (a bare ``grpc.aio`` stream ping-pong on
loopback: 366 against 199 µs a round trip, 242 against 139 µs of client CPU); turning those two
experiments off halves the cost of every envelope. A value already in the environment is
kept, and a process that imported ``grpc`` before this package keeps gRPC's defaults itself. A
grpcio that no longer knows these experiments logs "Unknown experiment" once and works as usual.
"""
import os

GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"

os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
