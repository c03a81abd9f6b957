"""PURE1: the engine imports nothing that does I/O, reads clocks, makes threads, or names a transport."""
import ast
import pathlib

import rayref.core

FORBIDDEN = {"simpy", "grpc", "asyncio", "threading", "time", "random", "socket", "subprocess",
             "multiprocessing", "transports", "sim", "os", "selectors", "greenlet"}


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_engine_is_pure():
    """PURE1: no module of rayref/core imports a transport, the simulator, I/O, threads, time or randomness."""
    root = pathlib.Path(rayref.core.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) >= 8
    offenders = {f.name: sorted(set(_imports(f)) & FORBIDDEN) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_modules_stay_small():
    """STYLE: small modules split by concept."""
    root = pathlib.Path(rayref.core.__file__).parent
    sizes = {f.name: len(f.read_text().splitlines()) for f in root.glob("*.py")}
    assert max(sizes.values()) <= 650, sizes
