"""The SimPy transport: a whole cluster in one process, in virtual time (see ``runtime``)."""
