"""Modules imported at their first use: `dp_accounting = lazy.module("dp_accounting")`.

The privacy libraries (dp-accounting, jax-privacy, and the scipy.stats they load) take about a second to import;
every `python -m bench` start imports every scenario for the config schema, so an evasion run would pay for them.
A lazy module is a real module whose code runs when an attribute is first read.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module `name`, executed on first attribute access (at once if it is already imported)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}; reinstall the package (`make env`)", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    lazy = importlib.util.module_from_spec(spec)
    sys.modules[name] = lazy
    loader.exec_module(lazy)
    return lazy
