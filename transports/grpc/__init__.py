"""The gRPC transport: the engine as real processes (head, node managers, workers, driver).

A first cut: one machine, tasks, actors and objects through node managers over ``grpc.aio``;
the README's "Real processes" section says what works and what is missing. ``node`` is a
node process, ``host`` a worker or driver process, ``session`` a cluster's files on this
machine, ``client`` the driver's side, ``wire`` what travels.
"""
