"""The engine tests share small builders in ``engine_helpers`` (next to this file).

The suite runs with ``--import-mode=importlib``, which does not put test directories on
``sys.path``; this makes the one helper module importable by its (unique) name.
"""
import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
