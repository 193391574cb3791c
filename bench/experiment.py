"""The one setup and the one finish every scenario shares (ARCHITECTURE.md, "The scenario contract").

`prepare` is the only place a scenario's inputs are read from the config: it
loads the data and instantiates the factories (model, defense, suite), and hands
the scenario an `Experiment` of plain values. `finish` turns the scenario's
result rows into records with the stable config hash and the one labelling rule
(`run_labels`), and writes them with the training history.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import pandas as pd

from bench import checkpoint, models, records, train
from bench.data import Dataset, with_validation
from bench.errors import BenchError


class KeyStreams:
    """Randomness by purpose: one JAX key and one NumPy generator per named stream.

    A scenario declares its stream names once (`Scenario.streams`); stream i is
    `jax.random.split(key(seed), len(names))[i]`, and JAX's split is prefix-stable,
    so appending a name never changes an existing stream. Drawing from one stream
    (or switching a feature off) never moves another: there is no shared generator.
    """

    def __init__(self, seed: int, names: Sequence[str]):
        if len(set(names)) != len(names):
            raise ValueError(f"stream names repeat: {list(names)}")
        self.seed, self.names = int(seed), tuple(names)
        self._keys = jax.random.split(jax.random.key(self.seed), len(self.names)) if self.names else []

    def key(self, name: str) -> jax.Array:
        """The JAX key of stream `name`."""
        if name not in self.names:
            raise KeyError(f"no random stream '{name}'; the scenario declares {list(self.names)}")
        return self._keys[self.names.index(name)]

    def rng(self, name: str) -> np.random.Generator:
        """A fresh NumPy generator for stream `name` (the same draws every call: one call per purpose)."""
        return np.random.default_rng(np.asarray(jax.random.key_data(self.key(name))).ravel().tolist())


class Model(NamedTuple):
    """A built model: the Flax module (certifiers read its layers), its pure logits function, initial params."""

    module: Any
    logits_fn: models.LogitsFn
    params: Any


@dataclass(frozen=True)
class TrainSettings:
    """The `train:` block, as numbers; `optimizer(total_steps)` builds the optax optimizer."""

    epochs: int
    batch_size: int
    optimizer_name: str
    learning_rate: float
    schedule: str
    momentum: float
    weight_decay: float
    overfit_check: Mapping[str, Any] = field(default_factory=dict)

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return train.make_optimizer(self.optimizer_name, self.learning_rate, self.schedule, total_steps,
                                    self.momentum, self.weight_decay)


@dataclass(frozen=True)
class SuiteSettings:
    """The `suite:` block: attack and certifier factories (instantiated partials) and numbers."""

    attacks: Mapping[str, Callable]
    norm: str
    eps: tuple[float, ...]
    n_examples: int | None
    split: str
    batch_size: int
    cumulative: bool
    sanity: bool
    sanity_examples: int
    certifiers: Mapping[str, Callable]
    certify_batch_size: int


@dataclass
class Experiment:
    """Everything a scenario runs on: data, factories, settings and streams; no config object inside."""

    data: Dataset
    model_factory: Callable[..., Any]     # (num_classes, mean, std) -> Flax module
    defense_factory: Callable[..., Any]   # partial of a defense factory: (logits_fn[, model]) -> objective
    train: TrainSettings
    suite: SuiteSettings
    streams: KeyStreams
    seed: int
    progress: bool
    run_dir: Path
    work_dir: Path | None                 # resumable state (bench/checkpoint.py); None: no resume
    checkpoint_every: int
    resume: bool
    load_params: str | None
    config: dict                          # the resolved config, for the records' hash
    labels: dict                          # {"model": ..., "defense": ...}: the config-group choices
    started: float = field(default_factory=time.perf_counter)

    def key(self, name: str) -> jax.Array:
        return self.streams.key(name)

    def rng(self, name: str) -> np.random.Generator:
        return self.streams.rng(name)

    def build_model(self, key: jax.Array | None = None, factory: Callable[..., Any] | None = None,
                    normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> Model:
        """A model for this data (the configured one, or `factory(num_classes, mean, std)`): one call per model,
        for the target and every substitute, shadow, ensemble member or stolen copy. Default key: stream "init";
        default normalization: the training split's per-channel mean and std (a loaded model brings its own)."""
        mean, std = normalization or (self.data.mean, self.data.std)
        try:
            module = (factory or self.model_factory)(num_classes=self.data.num_classes, mean=mean, std=std)
        except TypeError as err:  # a configured key the model function does not take
            raise BenchError(f"model: {err}; check its keys against bench/models.py") from None
        key = self.key("init") if key is None else key
        return Model(module, models.make_logits_fn(module), models.init_params(module, key, self.data.image_shape))

    def fit(self, objective, params, x, y, *, key: jax.Array, checkpoint: str | None = None,
            settings: TrainSettings | None = None, epochs: int | None = None, eval_fn=None):
        """Train with the run's `train:` settings (or `settings`; `epochs` overrides theirs) on (x, y): the
        optimizer for the whole run's steps, progress bar, and checkpoints in the work folder's `checkpoint`
        subfolder (None: none). Returns (params, history), as `bench.train.train`."""
        t = settings or self.train
        epochs = t.epochs if epochs is None else int(epochs)
        return train.train(objective, params, t.optimizer(epochs * train.steps_per_epoch(len(y), t.batch_size)), x, y,
                           epochs=epochs, batch_size=t.batch_size, key=key, progress=self.progress,
                           checkpointer=None if checkpoint is None else self.checkpointer(checkpoint), eval_fn=eval_fn)

    def objective(self, model: Model):
        """The configured defense's training objective for `model` (certified training also gets the module)."""
        wants_model = "model" in inspect.signature(self.defense_factory).parameters
        try:
            return self.defense_factory(logits_fn=model.logits_fn, **({"model": model.module} if wants_model else {}))
        except TypeError as err:  # a configured key the defense does not take
            raise BenchError(f"defense: {err}; check its keys against bench/defenses/") from None

    def checkpointer(self, name: str = "") -> checkpoint.Checkpointer | None:
        """Training checkpoints in the run's work folder (a subfolder `name` for a second trained model)."""
        if self.work_dir is None:
            return None
        return checkpoint.Checkpointer(self.work_dir / name if name else self.work_dir, self.checkpoint_every,
                                       self.resume)

    def save_params(self, params, model: Model | None = None) -> Path:
        """params.msgpack in the run folder, with the model's normalization constants when it has them."""
        path = self.run_dir / "params.msgpack"
        module = model.module if model is not None else None
        normalization = (module.mean, module.std) if hasattr(module, "mean") and hasattr(module, "std") else None
        models.save_params(path, params, normalization)
        return path

    def seconds(self) -> float:
        return time.perf_counter() - self.started


class Result(NamedTuple):
    """What a scenario's `run` returns: result rows (`records.row`), the training history, and a failure found
    after the work was done (soundness, privacy audit) that `finish` records before the run fails with it."""

    rows: list[dict]
    history: list[dict] = []
    failure: Exception | None = None


def run_labels(choices: Mapping[str, str]) -> dict:
    """The one labelling rule: model and defense are named by their config-group choices."""
    return {"model": choices.get("model", "model"), "defense": choices.get("defense", "defense")}


def _instantiate_all(blocks) -> dict:
    from hydra.utils import instantiate

    return {name: instantiate(block) for name, block in (blocks or {}).items()}


def _checked_partial(factory, what: str, where: str):
    """A configured partial whose keys the target takes; a BenchError naming the group and the key otherwise."""
    try:
        inspect.signature(factory)
    except ValueError:  # functools.partial with a keyword the function does not take
        target = getattr(factory, "func", factory)
        accepted = set(inspect.signature(target).parameters)
        unknown = sorted(set(getattr(factory, "keywords", {})) - accepted)
        raise BenchError(f"{what}: {getattr(target, '__name__', target)}() takes no {', '.join(unknown)}; check the "
                         f"keys against {where}") from None
    return factory


def writable_folder(path: Path, what: str) -> None:
    """Create `path` if needed; a BenchError unless it is a folder this process can write to."""
    if path.exists() and not path.is_dir():
        raise BenchError(f"{what} {path} is a file, not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create {what} {path} ({err.strerror}); choose another path") from None
    if not os.access(path, os.W_OK):
        raise BenchError(f"{what} {path} is read-only; choose another path")


def suite_settings(suite) -> SuiteSettings:
    """The suite block (typed by bench/schema.py) as numbers and factories."""
    if int(suite.batch_size) < 1:
        raise BenchError(f"suite.batch_size must be >= 1, got {suite.batch_size}")
    if str(suite.split) not in ("test", "validation"):
        raise BenchError(f"suite.split must be test or validation, got '{suite.split}'")
    if suite.n_examples is not None and int(suite.n_examples) < 1:
        raise BenchError(f"suite.n_examples must be >= 1 (or null: every test example), got {suite.n_examples}")
    return SuiteSettings(
        attacks=_instantiate_all(suite.attacks), norm=str(suite.norm), eps=tuple(float(e) for e in suite.eps),
        n_examples=None if suite.n_examples is None else int(suite.n_examples), split=str(suite.split),
        batch_size=int(suite.batch_size),
        cumulative=bool(suite.cumulative), sanity=bool(suite.sanity), sanity_examples=int(suite.sanity_examples),
        certifiers=_instantiate_all(suite.certifiers), certify_batch_size=int(suite.certify_batch_size))


def prepare(cfg, run_dir: Path, choices: Mapping[str, str], streams: Sequence[str]) -> Experiment:
    """The experiment for a composed config: every factory instantiated (so validated) before any work."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.checkpoint.every_steps < 0:
        raise BenchError(f"checkpoint.every_steps must be >= 0, got {cfg.checkpoint.every_steps}")
    # Everything that can fail after training is checked before it: the folders written to at the end.
    writable_folder(Path(run_dir), "the run folder (hydra.run.dir)")
    if cfg.checkpoint.dir:
        writable_folder(Path(cfg.checkpoint.dir), "checkpoint.dir")
    suite = suite_settings(cfg.suite)
    data = with_validation(instantiate(cfg.dataset), cfg.validation)
    if suite.split == "validation" and data.y_val is None:
        raise BenchError("suite.split=validation needs a validation split: set validation=N (e.g. validation=500)")
    t = cfg.train
    settings = TrainSettings(int(t.epochs), int(t.batch_size), str(t.optimizer), float(t.learning_rate),
                             str(t.schedule), float(t.momentum), float(t.weight_decay),
                             OmegaConf.to_container(t.overfit_check, resolve=True))
    return Experiment(
        data=data, model_factory=_checked_partial(instantiate(cfg.model, _partial_=True), "model", "bench/models.py"),
        defense_factory=_checked_partial(instantiate(cfg.defense, _partial_=True), "defense", "bench/defenses/"),
        train=settings, suite=suite,
        streams=KeyStreams(cfg.seed, streams), seed=int(cfg.seed), progress=bool(cfg.progress), run_dir=Path(run_dir),
        work_dir=checkpoint.work_dir(config, cfg.checkpoint.dir, cfg.seed) if cfg.checkpoint.dir else None,
        checkpoint_every=int(cfg.checkpoint.every_steps), resume=bool(cfg.checkpoint.resume),
        load_params=cfg.load_params, config=config, labels=run_labels(choices))


def context(scenario_name: str, defense_label: str, experiment: Experiment) -> dict:
    """The columns every record of a run shares: labels and provenance (hash of the stable config)."""
    return dict(scenario=scenario_name, dataset=experiment.data.name, model=experiment.labels["model"],
                defense=defense_label,
                **records.provenance(checkpoint.stable_config(experiment.config), seed=experiment.seed,
                                     data_fingerprint=experiment.data.fingerprint))


def finish(experiment: Experiment, scenario, result: Result) -> pd.DataFrame:
    """Write the run's records and history; then raise the failure the scenario recorded, if any."""
    defense = scenario.defense_label(experiment.labels["defense"])
    frame = records.make_rows(result.rows, context(scenario.name, defense, experiment))
    records.write_records(experiment.run_dir, frame)
    if result.history:
        records.atomic_write_bytes(experiment.run_dir / "history.json",
                                   pd.DataFrame(result.history).to_json(orient="records").encode())
    if result.failure is not None:
        raise result.failure
    return frame
