"""JAX's persistent compilation cache for the CLI and the scripts.

A second run of the same config finds its XLA executables on disk instead of compiling them again.
`enable()` points JAX at `$BENCH_JAX_CACHE` (default `~/.cache/bench/jax`); `BENCH_JAX_CACHE=off`
turns it off, and a `JAX_COMPILATION_CACHE_DIR` set by the user wins. Only compilations that took at least
`min_seconds` (`$BENCH_JAX_CACHE_MIN_SECONDS`, default 0.5) are stored, and the folder is capped at `max_bytes` (JAX evicts the least recently used),
so the cache stays small. Entries are keyed by the computation, the compiler options and the jax/jaxlib
versions, so a stale entry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "BENCH_JAX_CACHE"


def cache_dir() -> Path | None:
    """Where the cache lives, or None when it is turned off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bench" / "jax"


def enable(min_seconds: float | None = None, max_bytes: int = 2 << 30) -> Path | None:
    """Turn the persistent cache on (idempotent); returns the folder in use, or None."""
    import jax

    if min_seconds is None:
        min_seconds = float(os.environ.get("BENCH_JAX_CACHE_MIN_SECONDS", 0.5))
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    folder = cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_seconds))
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return folder
