"""The `transfer` scenario: craft adversarial examples on one model, score them on another.

Papernot, McDaniel & Goodfellow 2016 ("Transferability in Machine Learning") and Liu et al. 2016 ("Delving
into Transferable Adversarial Examples and Black-box Attacks"):

1. train every Flax model of `models` (an architecture of bench/models.py, a defense of bench/defenses, a
   seed, all of the training split or one of its two disjoint halves) and fit every scikit-learn learner of
   `learners` (bench/learners.py) on the flattened training pixels;
2. sources are the differentiable ones (the Flax models, logistic regression, the linear SVM) and every
   ensemble of `ensembles` (members' logits averaged, `fusion: logits`, Liu et al.'s choice; or their
   probabilities averaged, `fusion: probabilities`); targets are every model and learner;
3. the suite's attacks (`suite.attacks` at every `suite.eps`, on `suite.split`) craft on each source once,
   and every target scores the same adversarial examples. A cell is the target's **error rate on the
   examples it classifies correctly when clean** (`n` is their count), so a weak target does not look
   vulnerable; the diagonal (source = target) is the white-box attack. With `targeted`, each example is
   also pushed towards the class (y + 1) mod classes and the cell is the share the target puts there;
4. pictures next to the records: the matrix as a heatmap per attack and epsilon, and Goodfellow et al.
   2015's "wrong almost everywhere" plot (every class logit along the FGSM direction and along a random
   sign direction, eps from -1 to 1) for the first Flax model.
Records: evaluator `transfer` (metric `error_rate` / `targeted_success`, columns source, target, attack,
white_box, held_out), `clean` accuracy and `train` seconds per model (column target).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import evaluate, learners, models, records
from bench.defenses import DEFENSES
from bench.errors import BenchError
from bench.experiment import Experiment, Result, TrainSettings

DATA_PARTS = ("all", "half_a", "half_b")
ROLES = ("both", "source", "target")
FUSIONS = ("logits", "probabilities")


@dataclass
class ModelSpec:
    """A Flax model of the matrix; null fields are the run's configured model= / defense= / train.epochs."""

    arch: Optional[str] = None
    model_args: Dict[str, Any] = field(default_factory=dict)
    defense: Optional[str] = None
    defense_args: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    data: str = "all"
    epochs: Optional[int] = None
    role: str = "both"
    train_args: Dict[str, Any] = field(default_factory=dict)  # this model's own train.* (batch_size, learning_rate,
                                                             # schedule, optimizer, ...), e.g. a defense's recipe


@dataclass
class LearnerSpec:
    """A scikit-learn learner (bench/learners.py); only the linear ones can be sources."""

    kind: str = MISSING
    args: Dict[str, Any] = field(default_factory=dict)
    data: str = "all"
    role: str = "both"


@dataclass
class EnsembleSpec:
    members: List[str] = MISSING
    fusion: str = "logits"


class Node(NamedTuple):
    """A source or target: labels for any input, and a JAX logits function where it is differentiable."""

    predict: Any                 # x -> (n,) labels
    logits_fn: Any = None        # (params, x) -> logits, or None (no gradient: a target only)
    params: Any = None
    kind: str = "flax"           # flax | learner | ensemble
    source: bool = True          # crafted on (role both or source)


@dataclass
class Transfer:
    """Transfer across models, training sets and learning algorithms: the parameters of conf/scenario/transfer.yaml."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "transfer"
    # name -> ModelSpec / LearnerSpec / EnsembleSpec fields (checked in `run`; open dicts so that `+scenario.models.x.arch=mlp`
    # adds one from the command line)
    models: Dict[str, Any] = field(default_factory=dict)
    learners: Dict[str, Any] = field(default_factory=dict)
    ensembles: Dict[str, Any] = field(default_factory=dict)
    use: Optional[List[str]] = MISSING  # the entries of models, learners and ensembles to run (null: all)
    targeted: bool = MISSING
    pictures: bool = MISSING
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "attack", "halves", "learners", "pictures")

    @staticmethod
    def defense_label(defense: str) -> str:
        return defense

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        return transfer_table(frame)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        out = Path(out)
        matrix, ensembles = transfer_table(frame), ensemble_table(frame)
        text = ["# Transfer matrix", "",
                "Each cell: the target's error rate (%) on adversarial examples crafted on the source, counted only "
                "over the examples the target classifies correctly when clean (source = target: the white-box "
                "attack). Written by the transfer scenario (bench/scenarios/transfer.py) from its records.", "",
                matrix.to_markdown(index=False), ""]
        if not ensembles.empty:
            text += ["# Ensembles vs single sources (held-out targets)", "", ensembles.to_markdown(index=False), ""]
        return [records.atomic_write_bytes(out / "transfer.md", "\n".join(text).encode()),
                records.atomic_write_bytes(out / "transfer.csv", matrix.to_csv(index=False).encode())]

    def _specs(self):
        """The entries to run, as ModelSpec / LearnerSpec / EnsembleSpec; unknown fields and names fail here."""
        every = {**self.models, **self.learners, **self.ensembles}
        use = list(every) if self.use is None else list(self.use)
        unknown = [n for n in use if n not in every]
        if unknown:
            raise BenchError(f"scenario.use: {unknown} are not entries of scenario.models, learners or ensembles "
                             f"({sorted(every)})")

        def build(cls, group, name, value):
            try:
                return cls(**dict(value or {}))
            except TypeError as err:
                fields = ", ".join(f for f in cls.__dataclass_fields__)
                raise BenchError(f"scenario.{group}.{name}: {err} (its fields: {fields})") from None

        self.models = {n: build(ModelSpec, "models", n, v) for n, v in self.models.items() if n in use}
        self.learners = {n: build(LearnerSpec, "learners", n, v) for n, v in self.learners.items() if n in use}
        self.ensembles = {n: build(EnsembleSpec, "ensembles", n, v) for n, v in self.ensembles.items() if n in use}

    def _check(self, exp: Experiment) -> None:
        self._specs()
        if not self.models and not self.learners:
            raise BenchError("scenario.models and scenario.learners are both empty; give at least two models")
        for name, spec in self.models.items():
            if spec.arch is not None and spec.arch not in models.MODELS:
                raise BenchError(f"scenario.models.{name}.arch={spec.arch}: unknown; use one of {sorted(models.MODELS)}")
            if spec.defense is not None and spec.defense not in DEFENSES:
                raise BenchError(f"scenario.models.{name}.defense={spec.defense}: unknown; use one of {sorted(DEFENSES)}")
            if spec.data not in DATA_PARTS or spec.role not in ROLES:
                raise BenchError(f"scenario.models.{name}: data must be one of {list(DATA_PARTS)} and role one of "
                                 f"{list(ROLES)}, got data={spec.data} role={spec.role}")
        for name, spec in self.learners.items():
            if spec.kind not in learners.LEARNERS:
                raise BenchError(f"scenario.learners.{name}.kind={spec.kind}: unknown; use one of "
                                 f"{sorted(learners.LEARNERS)}")
            if spec.data not in DATA_PARTS or spec.role not in ROLES:
                raise BenchError(f"scenario.learners.{name}: data must be one of {list(DATA_PARTS)} and role one of "
                                 f"{list(ROLES)}, got data={spec.data} role={spec.role}")
            if spec.role != "target" and not learners.LEARNERS[spec.kind][1]:
                raise BenchError(f"scenario.learners.{name}: a {spec.kind} has no gradient, so it can only be a "
                                 f"target; set scenario.learners.{name}.role=target")
        names = set(self.models) | set(self.learners)
        for name, spec in self.ensembles.items():
            if name in names:
                raise BenchError(f"scenario.ensembles.{name}: the name is also a model's; rename the ensemble")
            unknown = [m for m in spec.members if m not in names]
            if unknown or len(spec.members) < 2:
                raise BenchError(f"scenario.ensembles.{name}.members={list(spec.members)}: needs at least two of the "
                                 f"models and learners run {sorted(names)}" + (f" ({unknown} not run: add them to "
                                                                                f"scenario.use)" if unknown else ""))
            no_gradient = [m for m in spec.members if m in self.learners
                           and not learners.LEARNERS[self.learners[m].kind][1]]
            if no_gradient:
                raise BenchError(f"scenario.ensembles.{name}: members {no_gradient} have no gradient; use Flax models, "
                                 "logreg or linear_svm")
            if spec.fusion not in FUSIONS:
                raise BenchError(f"scenario.ensembles.{name}.fusion={spec.fusion}: use one of {list(FUSIONS)}")
        if self.targeted:
            bad = [n for n, f in exp.suite.attacks.items() if "targeted" not in inspect.signature(f).parameters]
            if bad:
                raise BenchError(f"scenario.targeted=true needs attacks that take `targeted` (fgsm, pgd); {bad} do not: "
                                 "use suite=fgsm_pgd or set scenario.targeted=false")

    def run(self, exp: Experiment) -> Result:
        self._check(exp)
        data, t, suite_cfg = exp.data, exp.train, exp.suite
        x_eval, y_eval = data.split(suite_cfg.split)
        if suite_cfg.n_examples is not None:
            x_eval, y_eval = x_eval[: suite_cfg.n_examples], y_eval[: suite_cfg.n_examples]
        order = exp.rng("halves").permutation(len(data.y_train))
        parts = {"all": np.arange(len(data.y_train)), "half_a": np.sort(order[: len(order) // 2]),
                 "half_b": np.sort(order[len(order) // 2:])}
        rows, nodes = [], {}
        model_dir = exp.run_dir / "models"

        for name, spec in self.models.items():  # 1. the Flax models
            factory = None if spec.arch is None else partial(models.MODELS[spec.arch], **spec.model_args)
            model = exp.build_model(jax.random.fold_in(exp.key("init"), spec.seed), factory)
            if spec.defense is None:
                objective = exp.objective(model)
            else:
                defense = DEFENSES[spec.defense]
                wants_model = "model" in inspect.signature(defense).parameters
                try:
                    objective = defense(model.logits_fn, **({"model": model.module} if wants_model else {}),
                                        **spec.defense_args)
                except TypeError as err:
                    raise BenchError(f"scenario.models.{name}.defense_args: {err}; check them against "
                                     f"bench/defenses/") from None
            idx = parts[spec.data]
            mt = t
            if spec.train_args:
                renamed = {("optimizer_name" if k == "optimizer" else k): v for k, v in spec.train_args.items()}
                unknown = sorted(set(renamed) - set(TrainSettings.__dataclass_fields__))
                if unknown:
                    raise BenchError(f"scenario.models.{name}.train_args: unknown keys {unknown}; use keys of train:")
                mt = replace(t, **renamed)
            epochs = mt.epochs if spec.epochs is None else int(spec.epochs)
            print(f"transfer: training {name} ({spec.arch or 'model='}, {spec.defense or 'defense='}, seed "
                  f"{spec.seed}, {spec.data} of the training split, {epochs} epochs)", file=sys.stderr)
            started = exp.seconds()
            params, _ = exp.fit(objective, model.params, data.x_train[idx], data.y_train[idx],
                                key=jax.random.fold_in(exp.key("train"), spec.seed), checkpoint=f"models/{name}",
                                settings=mt, epochs=epochs)
            models.save_params(model_dir / f"{name}.msgpack", params, (model.module.mean, model.module.std))
            rows.append(records.row("train", "seconds", exp.seconds() - started, len(idx), target=name))
            nodes[name] = Node(partial(evaluate.predict, model.logits_fn, params), model.logits_fn, params, "flax",
                               spec.role != "target")

        for name, spec in self.learners.items():  # scikit-learn learners on flattened pixels
            idx = parts[spec.data]
            started = exp.seconds()
            fitted = learners.fit(spec.kind, data.x_train[idx], data.y_train[idx], data.num_classes,
                                  seed=int(exp.rng("learners").integers(2**31)), **spec.args)
            rows.append(records.row("train", "seconds", exp.seconds() - started, len(idx), target=name))
            nodes[name] = Node(lambda x, f=fitted: f.predict_proba(x).argmax(axis=1), fitted.logits_fn, fitted.params,
                               "learner", spec.role != "target")

        target_names = [n for n, s in [*self.models.items(), *self.learners.items()] if s.role != "source"]
        clean = {n: nodes[n].predict(x_eval) for n in nodes}
        for n in nodes:
            accuracy = float(np.mean(clean[n] == y_eval))
            rows.append(records.row("clean", "accuracy", accuracy, len(y_eval), target=n))
            if accuracy < 2.0 / data.num_classes:
                print(f"warning: {n} classifies {accuracy:.1%} of the clean examples correctly (chance is "
                      f"{1 / data.num_classes:.0%}): its row and column of the matrix mean little; check its recipe "
                      f"(scenario.models.{n} / scenario.learners.{n})", file=sys.stderr)

        sources = {n: node for n, node in nodes.items() if node.source}
        for name, spec in self.ensembles.items():  # members need a gradient, whatever their role
            members = [nodes[m] for m in spec.members]
            fused, params = _fused(tuple(m.logits_fn for m in members), spec.fusion), tuple(m.params for m in members)
            sources[name] = Node(partial(evaluate.predict, fused, params), fused, params, "ensemble")

        attack_key = exp.key("attack")
        suite = evaluate.build_suite(suite_cfg.attacks, suite_cfg.norm, list(suite_cfg.eps))
        targeted_suite = {}
        if self.targeted:
            targeted_suite = {k: suite_cfg.attacks[k[1]](norm=suite_cfg.norm, eps=k[0], targeted=True) for k in suite}
        goal = (y_eval + 1) % data.num_classes
        for s_i, (source, node) in enumerate(sources.items()):  # 2. craft once per source, score on every target
            members = set(self.ensembles[source].members) if source in self.ensembles else {source}
            for a_i, ((eps, attack_name), attack) in enumerate(suite.items()):
                key = jax.random.fold_in(jax.random.fold_in(attack_key, s_i), a_i)
                modes = [("error_rate", attack, y_eval)]
                if self.targeted:
                    modes.append(("targeted_success", targeted_suite[(eps, attack_name)], goal))
                for metric, atk, labels in modes:
                    started = exp.seconds()
                    x_adv = evaluate.craft(atk, node.logits_fn, node.params, x_eval, labels, suite_cfg.norm, eps,
                                           key, batch_size=suite_cfg.batch_size, progress=exp.progress,
                                           desc=f"{attack_name} eps {eps:g} on {source}")
                    seconds = exp.seconds() - started
                    for target in target_names:
                        correct = clean[target] == y_eval
                        pred = nodes[target].predict(x_adv)[correct]
                        hit = pred == labels[correct] if metric == "targeted_success" else pred != y_eval[correct]
                        rows.append(records.row(
                            "transfer", metric, float(hit.mean()) if correct.any() else float("nan"), int(correct.sum()),
                            norm=suite_cfg.norm, eps=eps, seconds=seconds, attack=attack_name, source=source,
                            target=target, white_box=source == target, held_out=target not in members))

        if self.pictures:
            _pictures(exp, rows, nodes, x_eval, y_eval, suite_cfg.norm)
        for row in rows:
            row.setdefault("split", "none" if row["evaluator"] == "train" else suite_cfg.split)
        return Result(rows, [], None)


def _fused(fns, fusion):
    """An ensemble's logits: the members' logits averaged, or the log of their averaged probabilities."""

    def logits_fn(params, x):
        zs = jnp.stack([fn(p, x) for fn, p in zip(fns, params)])
        if fusion == "logits":
            return zs.mean(axis=0)
        return jnp.log(jax.nn.softmax(zs, axis=-1).mean(axis=0) + 1e-12)

    return logits_fn


def _pictures(exp, rows, nodes, x_eval, y_eval, norm):
    from bench import plots

    frame = pd.DataFrame([r for r in rows if r["evaluator"] == "transfer"])
    written = []
    for (metric, attack, eps), cells in frame.groupby(["metric", "attack", "eps"]):
        written.append(plots.transfer_heatmap(exp.run_dir / f"transfer_{metric}_{attack}_eps{eps:g}.png", cells,
                                              title=f"{attack} eps {eps:g} ({norm}): {metric.replace('_', ' ')}"))
    first = next((n for n, node in nodes.items() if node.kind == "flax"), None)
    if first is not None:
        written.append(plots.linearity_plot(exp.run_dir / f"wrong_almost_everywhere_{first}.png",
                                            nodes[first].logits_fn, nodes[first].params, x_eval[0], int(y_eval[0]),
                                            exp.key("pictures"), title=first))
    print("pictures: " + ", ".join(str(p) for p in written), file=sys.stderr)


def _mean_cells(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.groupby(by, dropna=False, sort=False)["value"].mean().reset_index()


def transfer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The matrix: one row per (attack, eps, metric, source), one column per target, cells in % (seeds averaged);
    clean accuracy of each target as the first row block."""
    cells = frame[frame.evaluator == "transfer"]
    if cells.empty:
        return pd.DataFrame()
    cells = _mean_cells(cells, ["metric", "attack", "eps", "source", "target"])
    table = cells.pivot_table(index=["metric", "attack", "eps", "source"], columns="target", values="value",
                              sort=False)
    targets = list(dict.fromkeys(cells.target))
    table = (100 * table[targets]).round(2).reset_index()
    clean = frame[(frame.evaluator == "clean") & (frame.metric == "accuracy")]
    if not clean.empty:
        acc = _mean_cells(clean, ["target"]).set_index("target")["value"]
        head = {"metric": "clean_accuracy", "attack": "", "eps": np.nan, "source": ""}
        head.update({t: round(100 * float(acc.get(t, np.nan)), 2) for t in targets})
        table = pd.concat([pd.DataFrame([head]), table], ignore_index=True)
    return table


def ensemble_table(frame: pd.DataFrame) -> pd.DataFrame:
    """For each ensemble and held-out target: its transfer rate next to its members' (mean and best single)."""
    cells = frame[(frame.evaluator == "transfer")]
    if cells.empty or "held_out" not in cells.columns:
        return pd.DataFrame()
    cells = _mean_cells(cells, ["metric", "attack", "eps", "source", "target", "held_out"])
    config = frame["config"].dropna().iloc[0] if "config" in frame.columns and frame["config"].notna().any() else None
    if config is None:
        return pd.DataFrame()
    import json

    ensembles = json.loads(config).get("scenario", {}).get("ensembles", {}) or {}
    out = []
    for name, spec in ensembles.items():
        mine = cells[(cells.source == name) & cells.held_out.astype(bool)]
        for _, cell in mine.iterrows():
            single = cells[(cells.source.isin(spec["members"])) & (cells.target == cell.target)
                           & (cells.metric == cell.metric) & (cells.attack == cell.attack) & (cells.eps == cell.eps)]
            out.append({"ensemble": name, "fusion": spec.get("fusion", "logits"), "members": "+".join(spec["members"]),
                        "metric": cell.metric, "attack": cell.attack, "eps": cell.eps, "target": cell.target,
                        "ensemble %": round(100 * cell.value, 2),
                        "single mean %": round(100 * single.value.mean(), 2) if not single.empty else np.nan,
                        "single best %": round(100 * single.value.max(), 2) if not single.empty else np.nan})
    return pd.DataFrame(out)
