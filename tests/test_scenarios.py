"""The scenario registry: one file, one yaml, one registry line per scenario; the shared setup; folder hygiene."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from bench.experiment import KeyStreams
from bench.scenarios import SCENARIOS

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENV = cli_env(ROOT)

TOY = '''"""A toy scenario: train the configured model, record its test accuracy."""

from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
from omegaconf import MISSING

from bench import evaluate, records, train
from bench.experiment import Experiment, Result


@dataclass
class Toy:
    _target_: str = MISSING
    name: str = "toy"
    n_test: int = MISSING  # a typed parameter of its own: the first n_test test images are scored
    streams: ClassVar[tuple[str, ...]] = ("init", "train")

    @staticmethod
    def defense_label(defense):
        return defense

    @staticmethod
    def table(frame):
        return frame[frame.metric == "accuracy"][["dataset", "model", "metric", "value"]].reset_index(drop=True)

    @staticmethod
    def write_tables(frame, out):
        return [records.atomic_write_bytes(f"{out}/toy.csv", Toy.table(frame).to_csv(index=False).encode())]

    def run(self, exp: Experiment) -> Result:
        model = exp.build_model()
        t = exp.train
        params, history = train.train(exp.objective(model), model.params,
                                      t.optimizer(t.epochs * train.steps_per_epoch(len(exp.data.y_train), t.batch_size)),
                                      exp.data.x_train, exp.data.y_train, epochs=t.epochs, batch_size=t.batch_size,
                                      key=exp.key("train"), progress=False)
        x, y = exp.data.x_test[: self.n_test], exp.data.y_test[: self.n_test]
        acc = evaluate.accuracy(model.logits_fn, params, x, y)
        return Result([records.row("toy", "accuracy", acc, len(y))], history)
'''


def test_registry_equals_the_targets_under_conf():
    names = sorted(p.stem for p in (CONF / "scenario").glob("*.yaml"))
    assert sorted(SCENARIOS) == names
    for name in names:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name="config", overrides=[f"scenario={name}"])
        cls = SCENARIOS[name]
        assert cfg.scenario._target_ == f"{cls.__module__}.{cls.__qualname__}"
        assert cfg.scenario.name == name


def test_a_toy_scenario_is_one_file_one_yaml_one_registry_line(tmp_path):
    """Added to a copy of the repository as a contributor would; __main__.py and report.py are not touched."""
    copy = tmp_path / "repo"
    for folder in ("bench", "conf"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "bench" / "scenarios" / "toy.py").write_text(TOY)
    (copy / "conf" / "scenario" / "toy.yaml").write_text(
        "defaults:\n  - toy_schema\n  - _self_\n_target_: bench.scenarios.toy.Toy\nname: toy\nn_test: 50\n")
    registry = copy / "bench" / "scenarios" / "__init__.py"
    text = registry.read_text()
    line = '    "privacy": "bench.scenarios.privacy.Privacy",\n'
    assert line in text
    registry.write_text(text.replace(line, line + '    "toy": "bench.scenarios.toy.Toy",\n'))
    before = {f: (ROOT / f).read_text() for f in ("bench/__main__.py", "bench/report.py")}
    assert all((copy / f).read_text() == text for f, text in before.items())

    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "bench", "scenario=toy", "debug=tiny", "progress=false",
                          f"hydra.run.dir={run_dir}"], cwd=copy, capture_output=True, text=True, timeout=300,
                         env={**ENV, "PYTHONPATH": str(copy)})
    assert out.returncode == 0, out.stderr[-2000:]
    frame = pd.read_parquet(run_dir / "records.parquet")
    assert set(frame.scenario) == {"toy"} and set(frame.dataset) == {"digits"} and set(frame.model) == {"mlp"}
    accuracy = frame[frame.metric == "accuracy"]
    assert 0.1 < accuracy.value.iloc[0] <= 1.0 and accuracy.n.iloc[0] == 50
    assert "| digits" in out.stdout and "accuracy" in out.stdout  # its table, printed by the entry point
    report = subprocess.run([sys.executable, "-m", "bench.report", str(run_dir), "--out", str(tmp_path)], cwd=copy,
                            capture_output=True, text=True, timeout=300, env={**ENV, "PYTHONPATH": str(copy)})
    assert report.returncode == 0, report.stderr[-2000:]
    assert (tmp_path / "toy.csv").is_file()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bench"))
    return found


def test_no_two_folders_of_bench_import_each_other():
    package = ROOT / "bench"
    folders = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    edges = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).parts
        if len(parts) < 2:
            continue  # top-level modules are shared ground
        for module in _imports(path):
            target = module.split(".")[1] if module.count(".") >= 1 else None
            if target in folders and target != parts[0]:
                edges.add((parts[0], target))
    assert not {(a, b) for a, b in edges if (b, a) in edges}, sorted(edges)


def test_the_entry_point_holds_no_scenario_logic():
    text = (ROOT / "bench" / "__main__.py").read_text()
    for name in SCENARIOS:
        assert f'"{name}"' not in text and f"'{name}'" not in text
    assert "DESIGN.md" not in "".join(p.read_text() for p in (ROOT / "bench").rglob("*.py"))


def test_key_streams_are_independent_by_purpose():
    a = KeyStreams(3, ("init", "train", "attack"))
    b = KeyStreams(3, ("init", "train", "attack", "canaries"))  # a feature added later: earlier streams unchanged
    for name in a.names:
        np.testing.assert_array_equal(jax.random.key_data(a.key(name)), jax.random.key_data(b.key(name)))
    # the streams the evasion scenario uses are the split the runs before named streams used
    legacy = jax.random.split(jax.random.key(3), 3)
    np.testing.assert_array_equal(jax.random.key_data(a.key("attack")), jax.random.key_data(legacy[2]))
    draws = {name: b.rng(name).random(4) for name in b.names}
    assert len({tuple(v) for v in draws.values()}) == len(draws)  # distinct purposes, distinct draws
    np.testing.assert_array_equal(b.rng("canaries").random(4), draws["canaries"])  # a stream is a function of its name


@pytest.mark.slow
def test_certify_cli_labels_and_hashes_a_run_as_the_run_did(tmp_path):
    """python -m bench.certify uses the shared setup: the run's labels and stable config hash."""
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "bench", "debug=tiny", "suite.sanity=false", "progress=false",
                          "defense=ibp", "defense.eps=0.05", f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "bench.certify", str(run), "--certifiers", "ibp", "--no-attacks",
                          "--eps", "0.01"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    run_records = pd.read_parquet(run / "records.parquet")
    certified = pd.read_parquet(run / "certified_records.parquet")
    assert set(certified.defense) == set(run_records.defense) == {"ibp"}  # not "ibp_training"
    assert set(certified.config_hash) == set(run_records.config_hash)
    assert "certified_accuracy" in set(certified.metric)
