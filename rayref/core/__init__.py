"""The engine: pure state machines (core worker, node manager, control plane, scheduling).

Nothing here does I/O, reads a clock, starts a thread or knows which transport drives it;
``tests/test_architecture.py`` checks that. Messages and commands live in ``protocol``.
"""
