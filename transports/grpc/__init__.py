"""The gRPC transport: the engine as real processes (head, node managers, workers, driver).

Early and partial: one machine, tasks, actors and objects through node managers over
``grpc.aio``; see ``transports/grpc/README.md`` for what works and what is missing.
"""
