"""Sweeps where one bad job is its own failure: recorded in its folder, named, and summarised at the end.

In a multirun (`python -m bench -m ...`), `bench.__main__` catches a job's
exception, writes `failure.json` into that job's folder (the job number, its
overrides, the error) and returns, so the launcher goes on with the other jobs
(joblib: the jobs in flight finish and keep their records). `SweepSummary`, a
Hydra callback (conf/config.yaml, hydra.callbacks), then prints "N jobs ran, M
failed" with each failure's job and reason, and makes the sweep exit with status
1 when any job failed.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

FAILURE_FILE = "failure.json"


def record_failure(run_dir: Path, job: int, overrides: list[str], err: BaseException, message: str | None) -> str:
    """Write the job's failure next to its (missing) records; returns the one line that names it."""
    from bench.records import atomic_write_bytes

    reason = message or f"{type(err).__name__}: {err}"
    line = f"job {job} ({' '.join(overrides) or 'defaults'}) failed: {reason}"
    payload = {"job": job, "overrides": overrides, "error": reason, "bad_input": message is not None,
               "traceback": None if message else traceback.format_exception(err)[-20:]}
    try:
        atomic_write_bytes(Path(run_dir) / FAILURE_FILE, json.dumps(payload, indent=1).encode())
    except Exception:  # the folder itself may be the problem; the line still names the job
        pass
    return line


class SweepSummary(Callback):
    """At the end of a multirun: how many jobs ran, which failed and why; exit status 1 if any failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = sorted((json.loads(p.read_text()) for p in sweep_dir.rglob(FAILURE_FILE)), key=lambda f: f["job"])
        finished = len(list(sweep_dir.rglob("records.parquet")))
        total = finished + len(failures)
        print(f"sweep: {total} jobs ran, {finished} wrote records, {len(failures)} failed ({sweep_dir})",
              file=sys.stderr)
        for f in failures:
            print(f"  job {f['job']} ({' '.join(f['overrides']) or 'defaults'}): {f['error']}", file=sys.stderr)
        if failures:
            sys.exit(1)
