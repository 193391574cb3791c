"""Records: one tidy row per (run, evaluator, threat, metric), with provenance; atomic writes.

Schema (ARCHITECTURE.md, "Records"): run_id, scenario, dataset, model, defense, evaluator, norm,
eps, metric, value, n, and provenance config_hash, git_rev, versions, seed,
data_fingerprint, seconds, created, and hardware (`machine()["summary"]`: CPU, cores, JAX devices; absent
from records written before it existed). Tables are derived from these rows only.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError

RECORDS_FILE = "records.parquet"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask
COLUMNS = [
    "run_id", "scenario", "dataset", "model", "defense", "evaluator", "norm", "eps", "metric", "value", "n",
    "config_hash", "git_rev", "versions", "seed", "data_fingerprint", "seconds", "created",
]
_PACKAGES = ("bench", "jax", "jaxlib", "flax", "optax", "numpy")


def config_hash(config: dict) -> str:
    """sha256 of the resolved config as canonical JSON (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_rev() -> str:
    """The commit of the source tree, with '-dirty' when it has uncommitted changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> str:
    """Installed versions of the packages that shape the numbers, as compact JSON."""
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return json.dumps(found, sort_keys=True)


@functools.lru_cache(maxsize=1)
def _machine() -> tuple:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import jax

        devices = sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()})
        count = jax.device_count()
    except Exception:  # no usable backend: the CPU line still says where it ran
        devices, count = [], 0
    summary = f"{cpu or platform.machine()}, {os.cpu_count()} cores; jax {', '.join(devices) or 'unknown'}" + \
              (f" x{count}" if count > 1 else "")
    return summary, cpu, devices, count


def machine() -> dict:
    """The hardware this process runs on: `summary` (one line, the `hardware` column of every record), the CPU,
    its cores, the platform and the JAX devices; `bench.reproduce` also writes it beside a run (machine.json)."""
    summary, cpu, devices, count = _machine()
    return {"summary": summary, "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax_devices": list(devices), "device_count": count,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def flatten(config: dict, prefix: str = "") -> dict:
    """{"train.epochs": 10, ...}: nested config keys joined with dots (lists kept as values)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def provenance(config: dict, *, seed: int, data_fingerprint: str, run_id: str | None = None) -> dict:
    """The provenance fields shared by every row of one run.

    config_hash identifies the run's config (seed included); experiment_hash the experiment, the same config
    without its seed: seeds of one experiment share it, so tables aggregate them, and never anything else.
    `config` is the config itself (JSON), so a table can say what differs between two experiments.
    """
    digest = config_hash(config)
    without_seed = {k: v for k, v in config.items() if k != "seed"}
    return {
        # the random suffix tells apart identical runs started in the same second (parallel sweep jobs)
        "run_id": run_id or f"{digest}-{seed}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}",
        "config_hash": digest,
        "experiment_hash": config_hash(without_seed),
        "config": json.dumps(config, sort_keys=True, default=str),
        "git_rev": git_rev(),
        "versions": versions(),
        "seed": int(seed),
        "data_fingerprint": data_fingerprint,
        "created": time.time(),
        "hardware": machine()["summary"],
    }


def row(evaluator: str, metric: str, value: float, n: int, *, norm: str = "none", eps: float = 0.0,
        seconds: float = 0.0, **extra) -> dict:
    """One result row (merged with the run's context by `make_rows`); `extra` adds columns such as `reason`."""
    return dict(evaluator=evaluator, norm=str(getattr(norm, "value", norm)), eps=float(eps), metric=metric,
                value=float(value), n=int(n), seconds=float(seconds), **extra)


def wilson_interval(p, n, z: float = 1.959963984540054) -> tuple[np.ndarray, np.ndarray]:
    """The 95% Wilson score interval of a proportion p observed on n examples (arrays broadcast); NaN where n is 0."""
    p, n = np.asarray(p, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    bad = ~(n > 0)
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def is_accuracy(metrics: pd.Series) -> np.ndarray:
    """Metrics that are a share of n examples classified correctly (they carry a confidence interval)."""
    return metrics.astype(str).str.endswith("accuracy").to_numpy()


def make_rows(results: list[dict], context: dict) -> pd.DataFrame:
    """Merge each evaluator result (evaluator, norm, eps, metric, value, n, seconds) with the run context.

    Every accuracy row gets its 95% Wilson interval from (value, n): columns ci_low and ci_high.
    """
    rows = [{**context, **r} for r in results]
    frame = pd.DataFrame(rows)
    if len(frame):
        low, high = wilson_interval(frame["value"], frame["n"])
        accuracy = is_accuracy(frame["metric"])
        frame["ci_low"], frame["ci_high"] = np.where(accuracy, low, np.nan), np.where(accuracy, high, np.nan)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise BenchError(f"records lack columns {missing}")
    return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise BenchError(f"cannot write to {path.parent} (read-only); choose another hydra.run.dir")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared files, as the user's umask says
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BenchError(f"disk full writing {path} ({err.strerror}); free space there or point hydra.run.dir / "
                             "checkpoint.dir elsewhere; the files written before it are kept") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_records(run_dir: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write a run's records atomically as Parquet into its run directory."""
    return atomic_write_bytes(Path(run_dir) / RECORDS_FILE, frame.to_parquet(index=False))


def read_records(*paths: str | os.PathLike) -> pd.DataFrame:
    """All records under the given run directories or files (searched recursively)."""
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob(RECORDS_FILE)))
        else:
            raise BenchError(f"{p} does not exist; pass run directories or records files")
    if not files:
        raise BenchError(f"no {RECORDS_FILE} under {', '.join(map(str, paths))}; run `python -m bench` first")
    frames, damaged = [], []
    for f in files:
        try:
            frame = pd.read_parquet(f)
            missing = [c for c in COLUMNS if c not in frame.columns]
            if missing:
                raise ValueError(f"lacks columns {missing}")
            frames.append(frame)
        except Exception as err:  # pyarrow raises several types for a damaged file
            damaged.append(f"{f} is not a valid records file ({type(err).__name__}); delete it or rerun that run")
    if not frames:
        raise BenchError("; ".join(damaged))
    for message in damaged:  # one bad run never hides the others: skipped, with one line each
        print(f"warning: {message}; skipped", file=sys.stderr)
    return pd.concat(frames, ignore_index=True)
