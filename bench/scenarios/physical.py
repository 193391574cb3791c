"""The `physical` scenario: do adversarial examples survive the physical world? (Kurakin, Goodfellow & Bengio
2016, "Adversarial examples in the physical world", arXiv:1607.02533; EOT: Athalye, Engstrom, Ilyas & Kwok 2018,
"Synthesizing Robust Adversarial Examples", ICML.)

1. train the configured model with the configured defense (or load `load_params`), as evasion does;
2. craft adversarial examples on `suite.split` with every attack of the suite (`python -m bench scenario=physical
   suite=fgsm_pgd`: FGSM and PGD) and with EOT-PGD (bench/attacks/eot.py, `eot:`), which ascends the expected
   loss over the transformation distribution `eot.transform` (a label of `transforms`, by default the composed
   `photo`), at every suite epsilon; every batch is checked against its threat model;
3. pass the clean and the adversarial images through each transformation of `transforms` (bench/transforms.py:
   affine, blur, brightness/contrast, noise, quantisation, JPEG and their compositions), `draws` fresh draws
   each (stream "transform"; the same draws for every attack, so attacks are compared on the same photographs),
   and record, per (attack, epsilon, transformation):
   - `destruction_rate`: Kurakin et al.'s d = sum_k C(x_k) ~C(x_adv_k) C(T(x_adv_k)) / sum_k C(x_k) ~C(x_adv_k),
     C(.) = classified correctly: of the adversarial examples that fooled the model (their clean image being
     classified correctly), the share the transformation un-fools, averaged over the draws (n = that count);
   - `survival_rate` = 1 - destruction rate; `transformed_success_rate`: the share of clean-correct examples
     whose transformed adversarial example is misclassified (not conditioned on fooling untransformed);
   - `transformed_accuracy`: accuracy on the transformed adversarial images;
   - EOT against `baseline` (plain PGD): `survival_gain` and `success_gain`, EOT's rate minus the baseline's;
   and per transformation the clean accuracy of the transformed clean images (evaluator `clean`);
4. physical.png beside the records (bench/plots_physical.py): a few examples clean, transformed, and per attack
   adversarial and adversarial-transformed at the largest epsilon, with the model's predictions.
Rows carry `attack` and `transform` columns. Table: destruction rates (%), rows attack x eps, columns
transformations (`table`); physical.md adds survival, success, clean accuracy under each transformation and the
EOT-vs-PGD gains.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import checkpoint, evaluate, models, records, sharding, train
from bench import transforms as tr
from bench.attacks.eot import eot_pgd
from bench.errors import BenchError
from bench.experiment import Experiment, Result
from bench.threat import apply_logits, check_threat_model


@dataclass
class EOT:
    """EOT-PGD's hyper-parameters (bench/attacks/eot.py); norm and eps come from the suite."""

    steps: int = MISSING
    step_size: Optional[float] = MISSING
    samples: int = MISSING
    restarts: int = MISSING
    transform: str = MISSING  # a label of the scenario's `transforms`, else a spec of names such as "blur+noise"


@dataclass
class Physical:
    """Survival of adversarial examples under print-and-photograph transformations: conf/scenario/physical.yaml."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "physical"
    # label -> transformation spec {name: {keyword: value} or null} (several names: composed in order)
    transforms: Dict[str, Dict[str, Optional[Dict[str, Any]]]] = MISSING
    draws: int = MISSING                    # fresh transformation draws per example
    attacks: Optional[List[str]] = MISSING  # the suite's attacks to transform (null: all of them)
    eot: Optional[EOT] = field(default_factory=EOT)  # null: no EOT attack
    eot_name: str = MISSING                 # the EOT attack's evaluator label
    baseline: str = MISSING                 # the attack EOT is compared with (plain PGD)
    batch_size: Optional[int] = MISSING     # attack and transform batches (null: suite.batch_size)
    picture_examples: int = MISSING         # rows of physical.png (0: no picture)
    picture_transform: Optional[str] = MISSING  # the transformation shown (null: the last of `transforms`)
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "attack", "transform")

    @staticmethod
    def defense_label(defense: str) -> str:
        return defense

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        return physical_table(frame, "destruction_rate")

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        return write_physical_tables(frame, out)

    # -------------------------------------------------------------------------------------------- the run

    def _validate(self, exp: Experiment) -> tuple[dict, list[str]]:
        if int(self.draws) < 1:
            raise BenchError(f"scenario.draws must be >= 1, got {self.draws}")
        if not self.transforms:
            raise BenchError("scenario.transforms is empty; name at least one, e.g. scenario.transforms={jpeg: "
                             "{jpeg: {quality: [30, 70]}}}")
        built = {}
        for label, spec in self.transforms.items():
            try:
                built[str(label)] = tr.from_spec(spec)
            except BenchError as err:
                raise BenchError(f"scenario.transforms.{label}: {err}") from None
        names = list(exp.suite.attacks) if self.attacks is None else [str(a) for a in self.attacks]
        unknown = [a for a in names if a not in exp.suite.attacks]
        if unknown:
            raise BenchError(f"scenario.attacks names {unknown}, not in the suite's attacks {list(exp.suite.attacks)}; "
                             "pick a suite that has them (e.g. suite=fgsm_pgd) or list only those")
        if self.eot is not None and self.eot_name in names:
            raise BenchError(f"scenario.eot_name '{self.eot_name}' is also a suite attack; give the EOT attack "
                             "another label")
        if int(self.picture_examples) < 0:
            raise BenchError(f"scenario.picture_examples must be >= 0, got {self.picture_examples}")
        if self.picture_transform is not None and self.picture_transform not in built:
            raise BenchError(f"scenario.picture_transform '{self.picture_transform}' is not one of "
                             f"scenario.transforms {list(built)}")
        return built, names

    def _attacks(self, exp: Experiment, names: list[str]) -> dict:
        s = exp.suite
        suite = evaluate.build_suite({a: s.attacks[a] for a in names}, s.norm, list(s.eps)) if names else {}
        if self.eot is not None:
            e = self.eot
            spec = self.transforms[e.transform] if e.transform in self.transforms else e.transform
            try:
                eot = {eps: eot_pgd(norm=s.norm, eps=eps, steps=e.steps, step_size=e.step_size, samples=e.samples,
                                    restarts=e.restarts, transform=spec) for eps in sorted(set(s.eps))}
            except BenchError as err:
                raise BenchError(f"scenario.eot: {err} (scenario.eot.transform is a label of scenario.transforms "
                                 f"{list(self.transforms)} or a spec such as 'blur+noise')") from None
            suite.update({(eps, self.eot_name): attack for eps, attack in eot.items()})
        if not suite:
            raise BenchError("no attacks to run: scenario.attacks is empty and scenario.eot is null")
        return dict(sorted(suite.items(), key=lambda kv: (kv[0][0], _order(kv[0][1], names, self.eot_name))))

    def _train(self, exp: Experiment):
        model = exp.build_model(normalization=models.saved_normalization(exp.load_params) if exp.load_params else None)
        rows, history = [], []
        if exp.load_params:
            return model, models.load_params(exp.load_params, model.params), rows, history
        t, data = exp.train, exp.data
        checkpointer = exp.checkpointer()
        optimizer = t.optimizer(t.epochs * train.steps_per_epoch(len(data.y_train), t.batch_size))
        params, history = train.train(
            exp.objective(model), model.params, optimizer, data.x_train, data.y_train, epochs=t.epochs,
            batch_size=t.batch_size, key=exp.key("train"), progress=exp.progress, checkpointer=checkpointer,
            eval_fn=lambda p: {"test_accuracy": evaluate.accuracy(model.logits_fn, p, data.x_test, data.y_test)})
        exp.save_params(params, model)
        seconds = exp.seconds()
        if checkpointer is not None and checkpointer.resumed_from is not None:
            rows.append(records.row("train", "resumed_from_step", checkpointer.resumed_from, len(data.y_train)))
        rows.append(records.row("train", "seconds", seconds, len(data.y_train), seconds=seconds))
        return model, params, rows, history

    def run(self, exp: Experiment) -> Result:
        built, names = self._validate(exp)
        suite = self._attacks(exp, names)
        s = exp.suite
        model, params, train_rows, history = self._train(exp)
        logits_fn = model.logits_fn
        x, y = exp.data.split(s.split)
        if s.n_examples is not None:
            x, y = x[: s.n_examples], y[: s.n_examples]
        n, draws = len(y), int(self.draws)
        batch = int(self.batch_size or s.batch_size)
        transform_key = exp.key("transform")
        rows: list[dict] = []

        t0 = time.perf_counter()
        clean = predict(logits_fn, params, x, batch) == y
        rows.append(records.row("clean", "accuracy", clean.mean(), n, seconds=time.perf_counter() - t0,
                                attack="none", transform="none"))
        # the same draws for every image set: draw d of transformation i is the key fold_in(fold_in(k, i), d)
        keys = {label: [jax.random.fold_in(jax.random.fold_in(transform_key, i), d) for d in range(draws)]
                for i, label in enumerate(built)}
        clean_correct_t = {}
        for label, fn in built.items():
            t0 = time.perf_counter()
            correct = np.stack([predict(logits_fn, params, x, batch, transform=fn, key=k) == y for k in keys[label]])
            clean_correct_t[label] = correct
            rows.append(records.row("clean", "transformed_accuracy", correct.mean(), n, seconds=time.perf_counter() - t0,
                                    attack="none", transform=label, draws=draws))

        attack_key = exp.key("attack")
        adversarial, survival, success = {}, {}, {}
        for j, ((eps, name), attack) in enumerate(suite.items()):
            t0 = time.perf_counter()
            x_adv = craft(attack, logits_fn, params, x, y, s.norm, eps, jax.random.fold_in(attack_key, j), batch,
                          progress=exp.progress, desc=f"{name} eps={eps:g}")
            craft_seconds = time.perf_counter() - t0
            adversarial[(eps, name)] = x_adv
            adv_correct = predict(logits_fn, params, x_adv, batch) == y
            fooled = clean & ~adv_correct
            n_fooled, n_clean = int(fooled.sum()), int(clean.sum())
            common = dict(norm=s.norm, eps=eps, attack=name)
            rows.append(records.row(name, "robust_accuracy", (clean & adv_correct).mean(), n, seconds=craft_seconds,
                                    transform="none", **common))
            rows.append(records.row(name, "fooled", n_fooled, n_clean, transform="none", **common))
            for label, fn in built.items():
                t0 = time.perf_counter()
                correct = np.stack([predict(logits_fn, params, x_adv, batch, transform=fn, key=k) == y
                                    for k in keys[label]])                    # (draws, n)
                seconds = time.perf_counter() - t0
                destruction, succeeded = destruction_rate(clean, adv_correct, correct)
                survival[(eps, name, label)], success[(eps, name, label)] = 1 - destruction, succeeded
                extra = dict(transform=label, draws=draws, **common)
                rows += [records.row(name, "destruction_rate", destruction, n_fooled, seconds=seconds, **extra),
                         records.row(name, "survival_rate", 1 - destruction, n_fooled, **extra),
                         records.row(name, "transformed_success_rate", succeeded, n_clean, **extra),
                         records.row(name, "transformed_accuracy", correct.mean(), n, **extra)]
        if self.eot is not None and self.baseline in names:
            for eps in sorted({e for e, _ in suite}):
                for label in built:
                    a, b = (eps, self.eot_name, label), (eps, self.baseline, label)
                    extra = dict(norm=s.norm, eps=eps, attack=self.eot_name, transform=label, draws=draws,
                                 baseline=self.baseline)
                    rows += [records.row(self.eot_name, "survival_gain", survival[a] - survival[b], n, **extra),
                             records.row(self.eot_name, "success_gain", success[a] - success[b], n, **extra)]
        rows += train_rows
        if int(self.picture_examples) > 0:
            label = self.picture_transform or list(built)[-1]
            self._picture(exp, logits_fn, params, x, y, clean, adversarial, label, built[label], keys[label][0],
                          batch)
        for row in rows:
            row.setdefault("split", "none" if row["evaluator"] == "train" else s.split)
        return Result(rows, history)

    def _picture(self, exp, logits_fn, params, x, y, clean, adversarial, label, fn, key, batch):
        """physical.png: the first examples classified correctly (preferring those every attack fooled)."""
        from bench.plots_physical import adversarial_grid

        eps = max(e for e, _ in adversarial)
        at_eps = {name: v for (e, name), v in adversarial.items() if e == eps}
        fooled_all = clean.copy()
        for v in at_eps.values():
            fooled_all &= predict(logits_fn, params, v, batch) != y
        order = np.concatenate([np.flatnonzero(fooled_all), np.flatnonzero(clean & ~fooled_all)])
        pick = order[: int(self.picture_examples)]
        if len(pick) == 0:
            print("physical.png: no example is classified correctly; no picture", file=sys.stderr)
            return
        # a transformation draws per image from the batch key: transform the picked examples as one batch
        columns = []
        for heading, images in [("clean", x[pick])] + [(f"{name} eps={eps:g}", v[pick]) for name, v in at_eps.items()]:
            shown = np.asarray(jax.jit(fn)(jnp.asarray(images), key))
            columns += [(heading, images, predict(logits_fn, params, images, batch)),
                        (f"{heading}\n+ {label}", shown, predict(logits_fn, params, shown, batch))]
        adversarial_grid(columns, y[pick], exp.run_dir / "physical.png",
                         title=f"{exp.data.name}: predictions before and after '{label}' (green: correct)")


def _order(name: str, names: list[str], eot_name: str) -> int:
    return names.index(name) if name in names else len(names)


# ------------------------------------------------------------------------------------------------ helpers

def destruction_rate(clean: np.ndarray, adversarial: np.ndarray, transformed: np.ndarray) -> tuple[float, float]:
    """Kurakin et al.'s destruction rate and the success rate under transformation, averaged over draws.

    Args (booleans, classified correctly): clean (n,) the clean images, adversarial (n,) their adversarial
      examples, transformed (draws, n) the transformed adversarial examples, one row per draw.
    Returns (destruction, success): of the examples with clean correct and adversarial wrong, the share whose
    transformed image is correct; of the clean-correct examples, the share whose transformed adversarial image
    is wrong. NaN where the denominator is empty.
    """
    clean, adversarial = np.asarray(clean, bool), np.asarray(adversarial, bool)
    transformed = np.asarray(transformed, bool).reshape(-1, len(clean))
    fooled = clean & ~adversarial
    n_fooled, n_clean = int(fooled.sum()), int(clean.sum())
    destruction = float(np.mean((transformed & fooled).sum(axis=1) / n_fooled)) if n_fooled else float("nan")
    success = float(np.mean((~transformed & clean).sum(axis=1) / n_clean)) if n_clean else float("nan")
    return destruction, success


@partial(jax.jit, static_argnames=("logits_fn", "transform"))
def _predict_transformed(logits_fn, params, x, key, transform):
    k_t, k_m = jax.random.split(key)
    return jnp.argmax(apply_logits(logits_fn, params, transform(x, k_t), k_m), axis=-1)


def predict(logits_fn, params, x: np.ndarray, batch_size: int, transform=None, key: jax.Array | None = None):
    """Predicted labels of x, or of transform(x) with `key` (batch b draws with fold_in(key, b))."""
    if transform is None:
        return evaluate.predict(logits_fn, params, x, batch_size)
    out = []
    for b, start in enumerate(range(0, len(x), batch_size)):
        xb = jnp.asarray(x[start:start + batch_size])
        out.append(np.asarray(_predict_transformed(logits_fn, params, xb, jax.random.fold_in(key, b), transform)))
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def craft(attack, logits_fn, params, x, y, norm, eps, key, batch_size: int, *, progress: bool = False,
          desc: str = "") -> np.ndarray:
    """Adversarial examples of x in batches (batch b attacks with fold_in(key, b)), each batch checked against
    its threat model (bench.threat.check_threat_model)."""
    from tqdm.auto import tqdm

    out = []
    starts = range(0, len(x), batch_size)
    for b, start in enumerate(tqdm(starts, desc=desc, disable=None if progress else True, leave=False)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        x_dev, y_dev = sharding.shard_batch(xb, yb)
        x_adv = np.asarray(attack(logits_fn, params, x_dev, y_dev, jax.random.fold_in(key, b)))
        check_threat_model(xb, x_adv, norm, eps)
        out.append(x_adv)
    return np.concatenate(out) if out else np.zeros_like(x)


# ------------------------------------------------------------------------------------------------ tables

_KEYS = ["dataset", "model", "defense", "attack", "eps"]


def physical_table(frame: pd.DataFrame, metric: str = "destruction_rate") -> pd.DataFrame:
    """Rows (dataset, model, defense, attack, eps), columns the transformations: `metric` in % (mean over seeds).

    Attacks in the order they ran; transformations in the order of `scenario.transforms`.
    """
    from bench.report import latest_runs

    frame = latest_runs(frame)
    frame = frame[(frame.scenario == "physical") & (frame.metric == metric)]
    if frame.empty:
        raise BenchError(f"no {metric} records of physical runs found; run `python -m bench scenario=physical`")
    attack_order = {a: i for i, a in enumerate(dict.fromkeys(frame["attack"]))}
    columns = list(dict.fromkeys(frame["transform"]))
    cells = frame.groupby(_KEYS + ["transform"], sort=False).agg(value=("value", "mean"), seeds=("seed", "nunique"))
    table = cells["value"].unstack("transform").reindex(columns=columns) * 100
    table.columns.name = None
    table["seeds"] = cells["seeds"].groupby(level=_KEYS, sort=False).max()
    table = table.reset_index()
    table = table.assign(_a=table["attack"].map(attack_order)).sort_values(["dataset", "model", "defense", "eps", "_a"])
    return table.drop(columns="_a").reset_index(drop=True)


def clean_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Clean accuracy (%) untransformed and under each transformation: rows (dataset, model, defense)."""
    from bench.report import latest_runs

    frame = latest_runs(frame)
    frame = frame[(frame.scenario == "physical") & (frame.evaluator == "clean")
                  & frame.metric.isin(["accuracy", "transformed_accuracy"])]
    if frame.empty:
        return pd.DataFrame()
    column = np.where(frame.metric == "accuracy", "untransformed", frame["transform"].astype(str))
    frame = frame.assign(column=column)
    columns = list(dict.fromkeys(["untransformed"] + list(frame.column)))
    table = frame.groupby(["dataset", "model", "defense", "column"], sort=False)["value"].mean().unstack("column")
    table = table.reindex(columns=columns) * 100
    table.columns.name = None
    return table.reset_index()


def write_physical_tables(frame: pd.DataFrame, out) -> list:
    """physical.md (destruction, survival gain, success and clean tables) and physical.csv (destruction rates)."""
    from pathlib import Path

    from bench.report import to_markdown

    out = Path(out)
    destruction = physical_table(frame, "destruction_rate")
    parts = ["# Physical-world transformations (Kurakin et al. 2016)",
             "## Destruction rate (%)\n\nOf the adversarial examples that fool the model (clean image classified "
             "correctly), the share a transformation un-fools, mean over fresh draws. Lower: the attack survives "
             "the transformation.\n\n" + to_markdown(destruction)]
    sections = [("transformed_success_rate", "Success under transformation (%)",
                 "Share of clean-correct examples whose transformed adversarial example is misclassified."),
                ("survival_gain", "EOT survival minus the baseline's (percentage points)",
                 "Survival rate (1 - destruction) of EOT-PGD minus that of plain PGD, on the same draws.")]
    for metric, heading, text in sections:
        if (frame.metric == metric).any():
            parts.append(f"## {heading}\n\n{text}\n\n" + to_markdown(physical_table(frame, metric)))
    clean = clean_table(frame)
    if not clean.empty:
        parts.append("## Clean accuracy under each transformation (%)\n\n" + to_markdown(clean))
    return [records.atomic_write_bytes(out / "physical.md", ("\n\n".join(parts) + "\n").encode()),
            records.atomic_write_bytes(out / "physical.csv", destruction.to_csv(index=False).encode())]
