"""End to end through `python -m bench`: a tiny sweep writes records, the report rebuilds the table; bad input fails fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import records, report
from bench.errors import BenchError
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
# The sanity checks would double these runs' time; tests/test_attack_suite.py covers them in-process.
TINY = ["dataset=digits", "train.epochs=2", "train.batch_size=64", "suite.eps=[0.05,0.1]", "suite.n_examples=64",
        "suite.attacks.pgd.steps=5", "suite.sanity=false", "progress=false"]


def _bench(*args, cwd=ROOT):
    if "--help" not in args:  # no checkpoints in the source tree (tests/test_scale.py covers them)
        args = (*args, "checkpoint.dir=null")
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=cli_env(ROOT))


@pytest.mark.slow
def test_sweep_writes_records_and_report_rebuilds_table(tmp_path):
    out = _bench("-m", "model=mlp,cnn_small", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(tmp_path.rglob(records.RECORDS_FILE))
    assert len(files) == 2
    frame = pd.read_parquet(files[0])
    assert set(records.COLUMNS) <= set(frame.columns)
    assert frame.data_fingerprint.nunique() == 1 and frame.git_rev.notna().all()
    assert (tmp_path / "0-digits-mlp-standard" / "params.msgpack").is_file()

    assert report.main([str(tmp_path), "--out", str(tmp_path / "tables")]) == 0
    table = pd.read_csv(tmp_path / "tables" / "evasion.csv")
    assert list(table.columns) == ["dataset", "model", "defense", "clean", "seeds", "linf 0.05", "linf 0.1"]
    assert sorted(table.model) == ["cnn_small", "mlp"] and set(table.dataset) == {"digits"}
    # Robust accuracy is a worst case: never above clean accuracy, never rising with epsilon.
    assert (table["linf 0.05"] <= table["clean"]).all() and (table["linf 0.1"] <= table["linf 0.05"]).all()
    assert "| digits" in (tmp_path / "tables" / "evasion.md").read_text()


def test_help_lists_the_config_groups():
    out = _bench("--help")
    assert out.returncode == 0
    for group in ("dataset:", "model:", "defense:", "suite:", "mnist5k", "cnn_small"):
        assert group in out.stdout


@pytest.mark.parametrize("override,message", [
    ("dataset=nosuchset", "Could not find 'dataset/nosuchset'"),
    ("model=nosuchnet", "Could not find 'model/nosuchnet'"),
    ("suite.eps=[-0.1]", "epsilon must be a finite number >= 0"),
    ("suite.eps=[1.5]", "exceeds 1"),
    ("suite.norm=l3", "unknown norm 'l3'"),
    ("train.batch_size=0", "batch_size must be >= 1"),
    ("dataset=files", "missing required value dataset.path"),
    ("dataset=tfds", "Offline datasets: digits, mnist5k"),
    ("train.epochs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),  # bench/schema.py
    ("seed=1.5", "could not be converted to Integer"),
    ("train.epochs=[1", "no viable alternative at input '[1'"),                            # malformed syntax
    ("train.nosuch=3", "Key 'nosuch' not in 'Train'"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps must be >= 0"),
])
def test_bad_input_is_one_clear_line(override, message, tmp_path, capsys, monkeypatch):
    """In this process (`bench.__main__.cli`, what `python -m bench` runs; the next test runs the real
    command line): the status is 2, the message names the problem, no traceback, no records."""
    from bench.__main__ import cli

    monkeypatch.setenv("BENCH_JAX_CACHE", "off")  # the CLI's cache setting stays out of this process
    status = cli(["dataset=digits", "progress=false", "checkpoint.dir=null", f"hydra.run.dir={tmp_path}", override])
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    assert message in err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob(records.RECORDS_FILE))


def test_one_line_errors_are_one_line(tmp_path):
    out = _bench("dataset=digits", f"hydra.run.dir={tmp_path}", "train.epochs=ten")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")


def test_out_of_memory_suggests_a_smaller_batch():
    from bench.__main__ import _bad_input

    err = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81604378624 bytes.")
    wrapped = ValueError("attack failed")
    wrapped.__cause__ = err
    assert "suite.batch_size" in _bad_input(wrapped) and "train.batch_size" in _bad_input(wrapped)
    assert _bad_input(ValueError("something else")) is None


def test_invalid_records_file_is_a_clear_error_and_kept(tmp_path, capsys):
    bad = tmp_path / "run" / records.RECORDS_FILE
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet")
    assert report.main([str(tmp_path)]) == 2
    assert "is not a valid records file" in capsys.readouterr().err
    assert bad.read_bytes() == b"not parquet"


def test_report_on_missing_records_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no records.parquet" in capsys.readouterr().err


@pytest.mark.slow
def test_certified_suite_shows_the_sandwich(tmp_path):
    """clean >= empirical robust (attacks) >= certified (IBP, CROWN), per epsilon, and no soundness failure."""
    out = _bench("dataset=digits", "suite=certified", "suite.eps=[0.01,0.05]", "suite.n_examples=64",
                 "suite.attacks.pgd.steps=10", "train.epochs=3", "suite.sanity=false", "progress=false",
                 f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    frame = pd.read_parquet(tmp_path / records.RECORDS_FILE)
    assert frame.loc[frame.evaluator == "soundness", "value"].tolist() == [0.0]
    table = report.evasion_table(frame).iloc[0]
    for eps in ("0.01", "0.05"):
        assert table["clean"] >= table[f"linf {eps}"] >= table[f"certified linf {eps}"]
    assert table["certified linf 0.01"] > 0  # CROWN certifies something at a tiny epsilon


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_results_folder_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(BenchError, match="read-only"):
            records.write_records(tmp_path / "run", pd.DataFrame({"a": [1]}))
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.slow
def test_a_second_run_of_the_same_config_compiles_nothing_new(tmp_path):
    """The CLI's persistent compilation cache: the first run stores executables, the same run again adds none."""
    cache = tmp_path / "cache"
    env = {**os.environ, "BENCH_JAX_CACHE": str(cache), "BENCH_JAX_CACHE_MIN_SECONDS": "0"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    args = [sys.executable, "-m", "bench", "debug=tiny", "suite.sanity=false"]
    root = Path(__file__).resolve().parents[1]
    subprocess.run([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=root, env=env, check=True, capture_output=True)
    first = sorted(p.name for p in cache.iterdir())
    assert first, "the first run stored nothing in the compilation cache"
    subprocess.run([*args, f"hydra.run.dir={tmp_path / 'b'}"], cwd=root, env=env, check=True, capture_output=True)
    assert sorted(p.name for p in cache.iterdir()) == first, "the same run compiled something again"
