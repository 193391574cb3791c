"""The `poisoning` scenario: poison the training set, train on it with the configured defense objective,
score the backdoor, then filter the training set with each detector and retrain.

1. an attack of `bench.poisoning.ATTACKS` (`attack`, `ratio`, `target`, its own `args`) makes a poisoned
   training set from the training split (stream "poison"); the poison ratio is the share of the training
   set modified (`PoisonedSet.ratio`), checked at run time to be exactly the indices where the poisoned set
   differs from the clean one, and recorded in every row (`poison_ratio`);
2. the configured model is trained on it with the configured defense's objective (`exp.objective`, so
   adversarial training or any other objective of the suite runs against the same poisons);
   with `clean_reference`, the same model is trained on the clean set too (rows `clean_training`);
3. records, per trained model (evaluator `poisoned`, `clean_training`, or a filter's name): CA, and for
   attacks with a test-time goal ASR and RA on the triggered test inputs (bench/poisoning/metrics.py);
4. each of `filters` (spectral signatures, activation clustering: bench/poisoning/) reads the poisoned
   model's penultimate-layer features of the poisoned set, flags images, and records detection TPR/FPR on the
   true poison indices; the model is retrained without the flagged images and scored again, with DER
   against the poisoned model.
All trainings start from the same initial parameters (stream "init") and data-order key (stream "train"),
so a filter's effect is measured against a paired run. Table: bench/poisoning/report.py (rows attack, ratio,
defense; CA, ASR, RA, TPR, FPR, DER, seeds). With `pictures`, poisons.png beside the records.
Targeted attacks (`bench.poisoning.TARGETED`: influence, feature_collision) run one poisoning per target test
image instead (`run_targeted`, `run_feature_collision`): `targets` targets per seed (stream "targets"), listed
in the rows' `targets` column, with the targeted success over them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import evaluate, records, train
from bench.errors import BenchError
from bench.experiment import Experiment, Result
from bench.poisoning import ATTACKS, FILTERS, TARGETED, attack_inputs, metrics, modified_indices
from bench.poisoning.features import extract, features_fn


@dataclass
class SpectralSignatures:
    """bench/poisoning/spectral.py."""

    eps: Optional[float] = MISSING
    remove_factor: float = MISSING


@dataclass
class ActivationClustering:
    """bench/poisoning/activation_clustering.py."""

    components: int = MISSING
    size_threshold: float = MISSING
    silhouette_threshold: float = MISSING
    restarts: int = MISSING


@dataclass
class Poisoning:
    """Training-set poisoning and backdoors: the parameters of conf/scenario/poisoning.yaml."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "poisoning"
    attack: str = MISSING
    ratio: float = MISSING
    target: int = MISSING
    args: Dict[str, Any] = field(default_factory=dict)
    filters: List[str] = field(default_factory=list)
    spectral_signatures: SpectralSignatures = field(default_factory=SpectralSignatures)
    activation_clustering: ActivationClustering = field(default_factory=ActivationClustering)
    clean_reference: bool = MISSING
    pictures: bool = MISSING
    classes: List[int] = field(default_factory=lambda: [3, 8])  # targeted attacks: the binary pair (a -> 0, b -> 1)
    targets: int = MISSING  # targeted attacks: target test images per seed
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "poison", "filter", "targets")

    @staticmethod
    def defense_label(defense: str) -> str:
        return defense

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        from bench.poisoning.report import poisoning_table

        return poisoning_table(frame, with_ci=True)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        from bench.poisoning.report import write_poisoning_tables

        return list(write_poisoning_tables(frame, out).values())

    def make_attack(self):
        if self.attack in TARGETED:
            try:
                return TARGETED[self.attack](**dict(self.args or {}))
            except TypeError as err:
                raise BenchError(f"scenario.args: {err}; check the keys against bench/poisoning/{self.attack}.py") \
                    from None
        if self.attack not in ATTACKS:
            raise BenchError(f"unknown scenario.attack '{self.attack}'; use one of {sorted(ATTACKS) + sorted(TARGETED)}")
        args = dict(self.args or {})
        for key in ("ratio", "target"):
            if key in args:
                raise BenchError(f"scenario.args.{key}: set scenario.{key} instead (one place for it)")
        try:
            return ATTACKS[self.attack](ratio=self.ratio, target=self.target, **args)
        except TypeError as err:
            raise BenchError(f"scenario.args: {err}; check the keys against bench/poisoning/{self.attack}.py") from None

    def make_filters(self) -> dict:
        unknown = [f for f in self.filters if f not in FILTERS]
        if unknown:
            raise BenchError(f"unknown scenario.filters {unknown}; use any of {sorted(FILTERS)}")
        return {name: FILTERS[name](**asdict(getattr(self, name))) for name in self.filters}

    def run_targeted(self, exp: Experiment) -> Result:
        """A targeted attack (bench/poisoning/influence.py): `targets` test images of the pair `classes`, drawn
        from those the clean victim classifies correctly (stream "targets"); one poisoning per target; rows:
        the victim's clean accuracy on the pair and the targeted success over the targets (listed in `targets`)."""
        from bench.poisoning import influence

        data = exp.data
        if len(self.classes) != 2 or len(set(self.classes)) != 2:
            raise BenchError(f"scenario.classes must be two different classes, got {list(self.classes)}")
        a, b = (int(c) for c in self.classes)
        attack = self.make_attack()
        pick = lambda x, y: (x[np.isin(y, [a, b])].reshape(int(np.isin(y, [a, b]).sum()), -1),
                             (y[np.isin(y, [a, b])] == b).astype(np.float32))
        X, y = pick(data.x_train, data.y_train)
        X_test, y_test = pick(data.x_test, data.y_test)
        if len(y) == 0 or len(y_test) == 0:
            raise BenchError(f"scenario.classes {[a, b]}: no images of these classes in {data.name}")
        lam = float(dict(self.args or {}).get("lam", 0.01))
        started = time.perf_counter()
        clean_pred = influence.predict(influence.fit(X, y, lam), X_test)
        correct = np.flatnonzero(clean_pred == y_test)
        count = int(self.targets)
        if not 1 <= count <= len(correct):
            raise BenchError(f"scenario.targets must be in 1..{len(correct)} (correctly classified test images of "
                             f"the pair), got {count}")
        chosen = np.sort(exp.rng("targets").choice(correct, size=count, replace=False))
        flips, ratios = [], []
        for j in chosen:
            poisoned, flipped = attack(X, y, X_test[j], float(y_test[j]))
            # clean-label and within budget, or no number
            if not np.array_equal(poisoned.y, y) or np.abs(poisoned.x - X).max() > poisoned.info["eps"] + 1e-6:
                raise RuntimeError(f"{poisoned.name}: a poison left its label or its L-inf budget")
            flips.append(flipped)
            ratios.append(poisoned.ratio)
        seconds = time.perf_counter() - started
        # the victim is the attack's own convex model, not the configured one: the rows say so
        extra = dict(attack=poisoned.name, poison_ratio=float(np.mean(ratios)), target=-1, split="test",
                     targets=",".join(map(str, chosen)), classes=f"{a},{b}", model="logistic_regression")
        return Result([
            records.row("clean_training", "clean_accuracy", np.mean(clean_pred == y_test), len(y_test),
                        **{**extra, "poison_ratio": 0.0}),
            records.row("poisoned", "targeted_success", metrics.targeted_success(np.array(flips), np.ones(count)),
                        count, seconds=seconds, **extra),
        ])

    def run_feature_collision(self, exp: Experiment) -> Result:
        """Feature collision (bench/poisoning/feature_collision.py) on a transfer-learning victim: the configured
        model trained on the clean set with the configured objective is the frozen feature extractor; per seed,
        `targets` test images it classifies correctly, of classes other than `target` (the attacker's label),
        drawn with stream "targets", each attacked on its own; the victim's last layer is retrained with the
        poisons in. Rows: the extractor's CA, the targeted success over the targets, and the success rate of the
        same retraining without poisons (`clean_training`: how often a target already lands on `target`)."""
        from bench.poisoning.feature_collision import fit_head

        data, t = exp.data, exp.train
        attack = self.make_attack()
        base = int(self.target)
        if not 0 <= base < data.num_classes:
            raise BenchError(f"scenario.target must be a class in 0..{data.num_classes - 1}, got {base}")
        model = exp.build_model()
        started = time.perf_counter()
        optimizer = t.optimizer(t.epochs * train.steps_per_epoch(len(data.y_train), t.batch_size))
        params, history = train.train(exp.objective(model), model.params, optimizer, data.x_train, data.y_train,
                                      epochs=t.epochs, batch_size=t.batch_size, key=exp.key("train"),
                                      progress=exp.progress, checkpointer=exp.checkpointer("clean"))
        fn = features_fn(model.module)
        feats = extract(fn, params, data.x_train).astype(np.float32)
        last = max((k for k in params if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
        head = {"kernel": params[last]["kernel"], "bias": params[last]["bias"]}
        pred = evaluate.predict(model.logits_fn, params, data.x_test)
        eligible = np.flatnonzero((pred == data.y_test) & (data.y_test != base))
        count = int(self.targets)
        if not 1 <= count <= len(eligible):
            raise BenchError(f"scenario.targets must be in 1..{len(eligible)}, got {count}")
        chosen = np.sort(exp.rng("targets").choice(eligible, size=count, replace=False))
        clean_head = fit_head(feats, data.y_train, head["kernel"], head["bias"], 0.01, 200)
        test_feats = extract(fn, params, data.x_test[chosen]).astype(np.float32)
        clean_flips = np.argmax(test_feats @ np.asarray(clean_head["kernel"]) + np.asarray(clean_head["bias"]), 1)
        rng = exp.rng("poison")
        flips, ratios = [], []
        for j in chosen:
            poisoned, flipped = attack(fn, params, head, data.x_train, data.y_train, data.x_test[j], base, rng,
                                       train_feats=feats)
            if (not np.array_equal(poisoned.y, data.y_train)
                    or np.abs(poisoned.x - data.x_train).max() > poisoned.info["eps"] + 1e-6):
                raise RuntimeError(f"{poisoned.name}: a poison left its label or its L-inf budget")
            flips.append(flipped)
            ratios.append(poisoned.ratio)
        seconds = time.perf_counter() - started
        extra = dict(attack=poisoned.name, poison_ratio=float(np.mean(ratios)), target=base, split="test",
                     targets=",".join(map(str, chosen)), model=f"{exp.labels['model']}+frozen_features")
        return Result([
            records.row("clean_training", "clean_accuracy", np.mean(pred == data.y_test), len(data.y_test),
                        **{**extra, "poison_ratio": 0.0}),
            records.row("clean_training", "targeted_success", np.mean(clean_flips == base), count,
                        **{**extra, "poison_ratio": 0.0}),
            records.row("poisoned", "targeted_success", float(np.mean(flips)), count, seconds=seconds, **extra),
        ], [{"model": "clean", **row} for row in history])

    def run(self, exp: Experiment) -> Result:
        if self.attack == "feature_collision":
            return self.run_feature_collision(exp)
        if self.attack in TARGETED:
            return self.run_targeted(exp)
        data, t = exp.data, exp.train
        make_poisons, filters = self.make_attack(), self.make_filters()
        x_train, y_train = data.x_train, data.y_train
        n = len(y_train)
        poisoned = make_poisons(x_train, y_train, exp.rng("poison"), data.num_classes)
        found = modified_indices(x_train, y_train, poisoned.x, poisoned.y)
        if not np.array_equal(found, poisoned.indices):  # the one definition of the ratio holds, or no number
            raise RuntimeError(f"{poisoned.name}: reports {len(poisoned.indices)} poisoned indices but the set "
                               f"differs from the clean one at {len(found)}")
        if self.pictures:
            from bench.poisoning.plots import poison_figure

            poison_figure(poisoned, x_train, y_train, exp.run_dir / "poisons.png")

        model = exp.build_model()
        logits_fn, objective = model.logits_fn, exp.objective(model)
        history: list[dict] = []

        def fit(x, y, name):
            started = time.perf_counter()
            optimizer = t.optimizer(t.epochs * train.steps_per_epoch(len(y), t.batch_size))
            params, h = train.train(objective, model.params, optimizer, x, y, epochs=t.epochs,
                                    batch_size=t.batch_size, key=exp.key("train"), progress=exp.progress,
                                    checkpointer=exp.checkpointer(name))
            history.extend({"model": name, **row} for row in h)
            return params, time.perf_counter() - started

        tested = attack_inputs(poisoned, data.x_test, data.y_test)
        rows: list[dict] = []

        def score(params, evaluator, seconds, ratio):
            extra = dict(attack=poisoned.name, poison_ratio=ratio, target=poisoned.target, split="test")
            ca = metrics.clean_accuracy(evaluate.predict(logits_fn, params, data.x_test), data.y_test)
            found = {"ca": ca, "asr": float("nan")}
            rows.append(records.row(evaluator, "clean_accuracy", ca, len(data.y_test), **extra))
            rows.append(records.row(evaluator, "train_seconds", seconds, n, seconds=seconds, **extra))
            if tested is not None and len(tested[1]):
                x_trig, y_true, y_adv = tested
                pred = evaluate.predict(logits_fn, params, x_trig)
                found["asr"] = metrics.attack_success_rate(pred, y_adv)
                rows.append(records.row(evaluator, "attack_success_rate", found["asr"], len(y_adv), **extra))
                rows.append(records.row(evaluator, "robust_accuracy", metrics.robust_accuracy(pred, y_true),
                                        len(y_adv), **extra))
            return found, extra

        if self.clean_reference:
            params, seconds = fit(x_train, y_train, "clean")
            score(params, "clean_training", seconds, 0.0)
        params, seconds = fit(poisoned.x, poisoned.y, "poisoned")
        exp.save_params(params, model)
        before, extra = score(params, "poisoned", seconds, poisoned.ratio)
        rows.append(records.row("poisoned", "poisons", len(poisoned.indices), n, **extra))

        if filters:
            feats = extract(features_fn(model.module), params, poisoned.x)
        for name, detect in filters.items():
            started = time.perf_counter()
            flagged = detect(feats, poisoned.y, exp.rng("filter"), poisoned.ratio)
            found = metrics.detection(flagged, poisoned.indices, n)
            detect_seconds = time.perf_counter() - started
            for metric in ("tpr", "fpr"):
                rows.append(records.row(name, metric, found[metric], len(poisoned.indices) if metric == "tpr"
                                        else n - len(poisoned.indices), seconds=detect_seconds, **extra))
            rows.append(records.row(name, "flagged", found["flagged"], n, **extra))
            keep = np.setdiff1d(np.arange(n), flagged)
            left = np.intersect1d(keep, poisoned.indices)
            rows.append(records.row(name, "poisons_left", len(left) / max(len(keep), 1), len(keep), **extra))
            params_f, seconds = fit(poisoned.x[keep], poisoned.y[keep], name)
            after, _ = score(params_f, name, seconds, poisoned.ratio)
            if np.isfinite(before["asr"]):
                rows.append(records.row(name, "der", metrics.der(before["ca"], before["asr"], after["ca"],
                                                                 after["asr"]), len(tested[1]), **extra))
        return Result(rows, history)
