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
in the rows' `targets` column, with the targeted success over them. Gradient matching
(`bench.poisoning.FROM_SCRATCH`, `run_from_scratch`) is targeted too, but its victim is the configured model
trained from scratch on the poisoned set (its own initialisation, stream "victim"), against a surrogate the
attacker trained on the clean set.

With `dp.enabled`, every model the scenario trains (clean, poisoned, filtered; gradient matching's victims, not
its surrogate) trains with DP-SGD (bench/privacy/dp_sgd.py, the privacy scenario's hooks: Poisson batches,
clipping, noise calibrated to `dp.target_epsilon` by the accountant); the rows carry `dp_epsilon` (the PLD
accountant's epsilon for the steps taken; inf without DP), `dp_delta`, `dp_noise_multiplier`, and the defense
column reads `<defense>+dp_sgd`. Scores are on `suite.split` (test, or with `validation=N` the validation split:
the split tuning reads); every row names it (`split`) and the command that made it (`command`).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import jax
import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import evaluate, records, train
from bench.errors import BenchError
from bench.experiment import Experiment, Result
from bench.poisoning import ATTACKS, FILTERS, FROM_SCRATCH, TARGETED, attack_inputs, metrics, modified_indices
from bench.poisoning.features import extract, features_fn
from bench.privacy import accounting, dp_sgd
from bench.scenarios.privacy import DP, Privacy


@dataclass
class PoisonDP(DP):
    """DP-SGD as a defense against the poisons: the privacy scenario's budget (conf/scenario/privacy.yaml) plus
    `enabled`."""

    enabled: bool = False


@dataclass
class Augment:
    """bench/poisoning/augment.py: random translations of up to `shift` pixels while training (0: none)."""

    shift: int = 0


def _command() -> str:
    """The command line of this run, without its seed (the table lists the seeds), from Hydra's overrides."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra (a test calling the scenario directly)
        return ""
    skip = ("seed=", "hydra.", "progress=", "checkpoint.")
    return " ".join(o for o in overrides if not o.startswith(skip))


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
    dp: PoisonDP = field(default_factory=PoisonDP)  # DP-SGD as a defense (off unless dp.enabled)
    augment: Augment = field(default_factory=Augment)  # the training recipe's random translations
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "poison", "filter", "targets", "noise", "victim")

    def defense_label(self, defense: str) -> str:
        return f"{defense}+dp_sgd" if self.dp.enabled else defense

    def check_dp(self) -> None:
        """Bad DP settings fail before any training, with the fix in the message."""
        if not self.dp.enabled:
            return
        d = self.dp
        if d.target_epsilon is None and d.noise_multiplier is None:
            raise BenchError("scenario.dp.enabled=true needs a budget: set scenario.dp.target_epsilon (e.g. 8; sigma is "
                             "calibrated by the accountant) or scenario.dp.noise_multiplier")
        if d.noise_multiplier is None and not float(d.target_epsilon) > 0:
            raise BenchError(f"scenario.dp.target_epsilon must be > 0 (a finite budget), got {d.target_epsilon}; "
                             "for no DP set scenario.dp.enabled=false")

    def fitter(self, exp: Experiment, model, objective, history: list):
        """`fit(x, y, name, params=None, key=None) -> (params, seconds, dp_facts)`: one training with the run's
        `train:` settings, or with DP-SGD when `dp.enabled` (then `dp_facts` holds epsilon under the PLD and RDP
        accountants for the steps actually taken, delta, sigma, q, steps; else epsilon inf)."""
        from bench.poisoning.augment import shifted

        t = exp.train
        plans, spent = {}, {}  # one calibration per training-set size, one accounting per event
        shift = int(self.augment.shift)
        objective = shifted(objective, shift)
        # ghost clipping computes the plain loss of the unshifted batch: with a shift, the per-example path
        defense = exp.labels.get("defense") if shift == 0 else f"{exp.labels.get('defense')}+augment"

        def fit(x, y, name, params=None, key=None):
            started = time.perf_counter()
            params = model.params if params is None else params
            key = exp.key("train") if key is None else key
            grad_fn = sampler = None
            if self.dp.enabled:
                d = self.dp
                if len(y) not in plans:
                    plans[len(y)] = dp_sgd.plan_from_settings(
                        len(y), clip_norm=d.clip_norm, batch_size=d.batch_size, sampling_rate=d.sampling_rate,
                        epochs=d.epochs, steps=d.steps, noise_multiplier=d.noise_multiplier,
                        target_epsilon=d.target_epsilon, delta=d.delta, accountant=d.accountant,
                        default_batch_size=t.batch_size, default_epochs=t.epochs)
                plan = plans[len(y)]
                optimizer = dp_sgd.dp_optimizer(t.optimizer(plan.steps), clip_norm=plan.clip_norm,
                                                noise_multiplier=plan.noise_multiplier,
                                                expected_batch_size=plan.expected_batch_size,
                                                key=jax.random.fold_in(exp.key("noise"),
                                                                        zlib.crc32(name.encode()) % 2 ** 31))
                # the privacy scenario's clipping path and sampler (ghost norms for a ConvNet with the standard
                # objective, else jax-privacy's per-example clipping): it reads only self.dp
                grad_fn, sampler = Privacy._dp_hooks(self, model, defense, plan, len(y))
                epochs, batch_size = plan.epochs, max(1, round(plan.expected_batch_size))
            else:
                epochs, batch_size = t.epochs, t.batch_size
                optimizer = t.optimizer(t.epochs * train.steps_per_epoch(len(y), t.batch_size))
            params, h = train.train(objective, params, optimizer, x, y, epochs=epochs, batch_size=batch_size,
                                    key=key, progress=exp.progress, grad_fn=grad_fn, sampler=sampler,
                                    checkpointer=exp.checkpointer(name))
            history.extend({"model": name, **row} for row in h)
            facts = {"dp_epsilon": float("inf")}
            if self.dp.enabled:
                account = (plan.q, plan.noise_multiplier, sampler.steps_taken, plan.delta)
                if account not in spent:
                    event = accounting.dpsgd_event(plan.q, plan.noise_multiplier, sampler.steps_taken)
                    spent[account] = {kind: accounting.epsilon(event, plan.delta, kind) for kind in ("pld", "rdp")}
                facts = {"dp_epsilon": spent[account]["pld"],
                         "dp_epsilon_rdp": spent[account]["rdp"], "dp_delta": plan.delta,
                         "dp_noise_multiplier": plan.noise_multiplier, "dp_sampling_rate": plan.q,
                         "dp_steps": sampler.steps_taken, "dp_clip_norm": plan.clip_norm}
            return params, time.perf_counter() - started, facts

        return fit

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        from bench.poisoning.report import poisoning_table

        return poisoning_table(frame, with_ci=True)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        from bench.poisoning.report import write_poisoning_tables

        return list(write_poisoning_tables(frame, out).values())

    def make_attack(self):
        if self.attack in FROM_SCRATCH:
            args = dict(self.args or {})
            if "ratio" in args:
                raise BenchError("scenario.args.ratio: set scenario.ratio instead (one place for it)")
            try:
                return FROM_SCRATCH[self.attack](ratio=self.ratio, **args)
            except TypeError as err:
                raise BenchError(f"scenario.args: {err}; check the keys against bench/poisoning/{self.attack}.py") \
                    from None
        if self.attack in TARGETED:
            try:
                return TARGETED[self.attack](**dict(self.args or {}))
            except TypeError as err:
                raise BenchError(f"scenario.args: {err}; check the keys against bench/poisoning/{self.attack}.py") \
                    from None
        if self.attack not in ATTACKS:
            raise BenchError(f"unknown scenario.attack '{self.attack}'; use one of "
                             f"{sorted(ATTACKS) + sorted(TARGETED) + sorted(FROM_SCRATCH)}")
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
        self.check_dp()
        if self.attack in FROM_SCRATCH:
            return self.run_from_scratch(exp)
        if self.dp.enabled and self.attack in TARGETED:
            raise BenchError(f"scenario.dp: DP-SGD trains the victims of label_flip, badnets, blend and "
                             f"gradient_matching; {self.attack}'s victim is its own model; set scenario.dp.enabled=false")
        if self.attack == "feature_collision":
            return self.run_feature_collision(exp)
        if self.attack in TARGETED:
            return self.run_targeted(exp)
        data = exp.data
        make_poisons, filters = self.make_attack(), self.make_filters()
        x_train, y_train = data.x_train, data.y_train
        x_eval, y_eval = data.split(exp.suite.split)
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
        fit = self.fitter(exp, model, objective, history)
        command = _command()

        tested = attack_inputs(poisoned, x_eval, y_eval)
        rows: list[dict] = []

        def score(params, evaluator, seconds, ratio, facts):
            extra = dict(attack=poisoned.name, poison_ratio=ratio, target=poisoned.target, split=exp.suite.split,
                         command=command, **facts)
            ca = metrics.clean_accuracy(evaluate.predict(logits_fn, params, x_eval), y_eval)
            found = {"ca": ca, "asr": float("nan")}
            rows.append(records.row(evaluator, "clean_accuracy", ca, len(y_eval), **extra))
            rows.append(records.row(evaluator, "train_seconds", seconds, n, seconds=seconds, **extra))
            if self.dp.enabled:
                rows.append(records.row(evaluator, "epsilon", facts["dp_epsilon"], n, **extra))
            if tested is not None and len(tested[1]):
                x_trig, y_true, y_adv = tested
                pred = evaluate.predict(logits_fn, params, x_trig)
                found["asr"] = metrics.attack_success_rate(pred, y_adv)
                rows.append(records.row(evaluator, "attack_success_rate", found["asr"], len(y_adv), **extra))
                rows.append(records.row(evaluator, "robust_accuracy", metrics.robust_accuracy(pred, y_true),
                                        len(y_adv), **extra))
            return found, extra

        if self.clean_reference:
            params, seconds, facts = fit(x_train, y_train, "clean")
            score(params, "clean_training", seconds, 0.0, facts)
        params, seconds, facts = fit(poisoned.x, poisoned.y, "poisoned")
        exp.save_params(params, model)
        before, extra = score(params, "poisoned", seconds, poisoned.ratio, facts)
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
            params_f, seconds, facts_f = fit(poisoned.x[keep], poisoned.y[keep], name)
            after, extra_f = score(params_f, name, seconds, poisoned.ratio, facts_f)
            if np.isfinite(before["asr"]):
                rows.append(records.row(name, "der", metrics.der(before["ca"], before["asr"], after["ca"],
                                                                 after["asr"]), len(tested[1]), **extra_f))
        return Result(rows, history)

    def run_from_scratch(self, exp: Experiment) -> Result:
        """Gradient matching (bench/poisoning/gradient_matching.py): the surrogate is the configured model trained
        on the clean set with the configured objective (streams "init", "train"; never DP: the attacker's own
        model). Per seed, `targets` test images of classes other than `target` (the adversarial label) that the
        surrogate classifies correctly (stream "targets"); per target, round(ratio * n) images of class `target`
        are perturbed within eps (stream "poison"), and a victim is trained FROM SCRATCH on the poisoned set
        (initialisation stream "victim", data order its own fold of "train"; the configured objective, DP-SGD with
        `dp.enabled`). All victims of a seed share that initialisation and order, and so does the clean
        reference victim trained on the clean set (rows `clean_training`: how often a target already lands on
        `target`). Rows: CA of the surrogate (`surrogate`), of the clean victim and the mean over the poisoned
        victims; targeted success over the targets (listed in `targets`); the alignment (cosine) of the poisons'
        gradient before and after crafting, on the surrogate."""
        data = exp.data
        attack = self.make_attack()
        adv = int(self.target)
        if not 0 <= adv < data.num_classes:
            raise BenchError(f"scenario.target (the adversarial label) must be a class in 0..{data.num_classes - 1}, "
                             f"got {adv}")
        x_train, y_train = data.x_train, data.y_train
        x_eval, y_eval = data.split(exp.suite.split)
        n = len(y_train)
        model = exp.build_model()
        logits_fn, objective = model.logits_fn, exp.objective(model)
        history: list[dict] = []
        command = _command()
        started = time.perf_counter()
        surrogate_fit = Poisoning.fitter(self._without_dp(), exp, model, objective, history)
        surrogate, surrogate_seconds, _ = surrogate_fit(x_train, y_train, "surrogate")
        pred = evaluate.predict(logits_fn, surrogate, x_eval)
        eligible = np.flatnonzero((pred == y_eval) & (y_eval != adv))
        count = int(self.targets)
        if not 1 <= count <= len(eligible):
            raise BenchError(f"scenario.targets must be in 1..{len(eligible)} (images the surrogate classifies "
                             f"correctly, of classes other than {adv}), got {count}")
        chosen = np.sort(exp.rng("targets").choice(eligible, size=count, replace=False))
        fit = self.fitter(exp, model, objective, history)
        victim_init = exp.build_model(key=exp.key("victim")).params
        victim_key = jax.random.fold_in(exp.key("train"), 1)
        clean_params, clean_seconds, facts = fit(x_train, y_train, "clean", params=victim_init, key=victim_key)
        clean_pred = evaluate.predict(logits_fn, clean_params, x_eval)
        rng = exp.rng("poison")
        flips, accs, before, after, ratios, craft_seconds, victim_seconds = [], [], [], [], [], 0.0, 0.0
        for i, j in enumerate(chosen):
            t0 = time.perf_counter()
            poisoned = attack(logits_fn, surrogate, x_train, y_train, x_eval[j], adv, rng)
            craft_seconds += time.perf_counter() - t0
            found = modified_indices(x_train, y_train, poisoned.x, poisoned.y)
            if (not np.array_equal(poisoned.y, y_train) or not np.array_equal(found, poisoned.indices)
                    or np.abs(poisoned.x - x_train).max() > poisoned.info["eps"] + 1e-6
                    or poisoned.x.min() < 0 or poisoned.x.max() > 1):
                raise RuntimeError(f"{poisoned.name}: a poison left its label, its L-inf budget or [0, 1], or the "
                                   "reported indices are not where the set changed")
            if i == 0 and self.pictures:
                from bench.poisoning.plots import poison_figure

                poison_figure(poisoned, x_train, y_train, exp.run_dir / "poisons.png", delta=poisoned.info["eps"],
                              target=(x_eval[j], int(y_eval[j])))
            params, seconds, facts = fit(poisoned.x, poisoned.y, f"victim_{i}", params=victim_init, key=victim_key)
            victim_seconds += seconds
            flips.append(int(evaluate.predict(logits_fn, params, x_eval[j:j + 1])[0]) == adv)
            accs.append(metrics.clean_accuracy(evaluate.predict(logits_fn, params, x_eval), y_eval))
            before.append(poisoned.info["alignment_before"])
            after.append(poisoned.info["alignment"])
            ratios.append(poisoned.ratio)
        extra = dict(attack=f"gradient_matching", poison_ratio=float(np.mean(ratios)), target=adv,
                     split=exp.suite.split, targets=",".join(map(str, chosen)), command=command,
                     poison_eps=float(poisoned.info["eps"]), **facts)
        clean_extra = {**extra, "poison_ratio": 0.0}
        rows = [
            records.row("surrogate", "clean_accuracy", np.mean(pred == y_eval), len(y_eval), seconds=surrogate_seconds,
                        **{**clean_extra, "dp_epsilon": float("inf")}),
            records.row("clean_training", "clean_accuracy", np.mean(clean_pred == y_eval), len(y_eval),
                        seconds=clean_seconds, **clean_extra),
            records.row("clean_training", "targeted_success", np.mean(clean_pred[chosen] == adv), count,
                        **clean_extra),
            records.row("poisoned", "clean_accuracy", float(np.mean(accs)), len(y_eval), **extra),
            records.row("poisoned", "targeted_success", float(np.mean(flips)), count,
                        seconds=time.perf_counter() - started, **extra),
            records.row("poisoned", "alignment_before", float(np.mean(before)), count, **extra),
            records.row("poisoned", "alignment", float(np.mean(after)), count, **extra),
            records.row("poisoned", "craft_seconds", craft_seconds, count, seconds=craft_seconds, **extra),
            records.row("poisoned", "train_seconds", victim_seconds, count, seconds=victim_seconds, **extra),
            records.row("poisoned", "poisons", float(np.mean([r * n for r in ratios])), n, **extra),
        ]
        if self.dp.enabled:
            rows.append(records.row("poisoned", "epsilon", facts["dp_epsilon"], n, **extra))
        return Result(rows, history)

    def _without_dp(self) -> "Poisoning":
        from dataclasses import replace

        return replace(self, dp=replace(self.dp, enabled=False))
