"""The `blackbox` scenario: the substitute attack of Papernot et al. 2017, through a query-counted API.

"Practical Black-Box Attacks against Machine Learning" (Papernot, McDaniel, Goodfellow, Jha, Celik, Swami):
the attacker never sees the oracle's parameters or training data, only its answers.

1. The oracle: the configured model and defense, trained on the training split, behind
   `bench.api.PredictionAPI` (`output`: label only, as in the paper, or scores; `budget`; every query logged).
2. The attacker holds the first `seeds` test images (unlabelled) and asks the oracle for their labels.
3. For `rounds` rounds: train the substitute (`substitute.arch`, default the paper's and cleverhans' 2x200
   MLP) on everything labelled so far, continuing from the previous round's weights with a fresh optimizer
   (cleverhans' `mnist_blackbox` tutorial does the same); then, except after the last round, Jacobian-based
   dataset augmentation: every held image x with oracle label y gives x + lambda_r * sign(dZ_y(x)/dx)
   (Z: the substitute's logits; clipped to [0, 1]), and the oracle labels the new images. The step is
   lambda_r = first_sign * lambda * (-1)^floor(r / flip_every): lambda 0.1, flipped every 3 rounds, 6 rounds.
   cleverhans starts with the negative sign (first_sign: -1, the default); the paper writes it positive.
4. After every round: the substitute's accuracy and the transfer of the suite's attacks (default FGSM at
   eps 0.3) crafted on the substitute against the oracle, on the test images after the seeds, with the
   queries spent so far: the curve of transfer success against queries.
Records: `oracle` accuracy, `substitute` accuracy and `transfer` rows (metric oracle_accuracy: the oracle's
accuracy on the transferred examples; error_rate: its error on them over the examples it gets right clean)
per `round` with `queries`; `api` queries. An exceeded budget stops the rounds with one clear error after
the rounds finished are recorded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Dict, Optional

import jax
import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import api, evaluate, models, records
from bench.errors import BenchError
from bench.experiment import Experiment, Result
from bench.substitute import fit_copy, jacobian_augment


@dataclass
class Substitute:
    """The attacker's model and its training each round (cleverhans' tutorial: 10 epochs, batch 128, Adam 1e-3)."""

    arch: str = MISSING
    model_args: Dict[str, Any] = field(default_factory=dict)
    epochs: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING


@dataclass
class BlackBox:
    """The substitute black-box attack: the parameters of conf/scenario/blackbox.yaml."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "blackbox"
    seeds: int = MISSING
    rounds: int = MISSING
    lmbda: float = MISSING
    flip_every: int = MISSING
    first_sign: int = MISSING
    output: str = MISSING
    budget: Optional[int] = MISSING
    substitute: Substitute = field(default_factory=Substitute)
    pictures: bool = MISSING
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "attack", "substitute", "api")

    @staticmethod
    def defense_label(defense: str) -> str:
        return defense

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        return blackbox_table(frame)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        from pathlib import Path

        out = Path(out)
        table, curve = blackbox_table(frame), curve_table(frame)
        text = ["# Black-box substitute attack (Papernot et al. 2017)", "",
                "Oracle accuracy on clean test images, the substitute's accuracy, and the oracle's accuracy on "
                "adversarial examples crafted on the substitute (lower is a stronger attack), with the oracle "
                "queries spent. Written by bench/scenarios/blackbox.py from its records.", "",
                table.to_markdown(index=False), "", "## Per round", "", curve.to_markdown(index=False), ""]
        return [records.atomic_write_bytes(out / "blackbox.md", "\n".join(text).encode()),
                records.atomic_write_bytes(out / "blackbox.csv", curve.to_csv(index=False).encode())]

    def _check(self, exp: Experiment) -> None:
        if self.substitute.arch not in models.MODELS:
            raise BenchError(f"scenario.substitute.arch={self.substitute.arch}: unknown; use one of {sorted(models.MODELS)}")
        if self.output not in api.MODES:
            raise BenchError(f"scenario.output={self.output}: use one of {list(api.MODES)}")
        n_test = len(exp.data.split(exp.suite.split)[1])
        if not 0 < int(self.seeds) < n_test:
            raise BenchError(f"scenario.seeds={self.seeds}: must be between 1 and the {n_test} images of the "
                             f"{exp.suite.split} split (the rest are attacked)")
        if int(self.rounds) < 1 or int(self.flip_every) < 1 or int(self.first_sign) not in (-1, 1):
            raise BenchError(f"scenario.rounds ({self.rounds}) and flip_every ({self.flip_every}) must be >= 1 and "
                             f"first_sign ({self.first_sign}) -1 or 1")
        if int(self.substitute.batch_size) > int(self.seeds):
            raise BenchError(f"scenario.substitute.batch_size={self.substitute.batch_size} exceeds the "
                             f"{self.seeds} seed images; lower it or raise scenario.seeds")

    def run(self, exp: Experiment) -> Result:
        self._check(exp)
        data, suite_cfg = exp.data, exp.suite
        x_split, y_split = data.split(suite_cfg.split)
        n_seeds = int(self.seeds)
        x_seed = x_split[:n_seeds]
        x_eval, y_eval = x_split[n_seeds:], y_split[n_seeds:]
        if suite_cfg.n_examples is not None:
            x_eval, y_eval = x_eval[: suite_cfg.n_examples], y_eval[: suite_cfg.n_examples]

        # 1. the oracle, trained as the evasion scenario trains its model
        oracle = exp.build_model()
        print("blackbox: training the oracle", file=sys.stderr)
        oracle_params, history = exp.fit(exp.objective(oracle), oracle.params, data.x_train, data.y_train,
                                         key=exp.key("train"), checkpoint="oracle")
        exp.save_params(oracle_params, oracle)
        oracle_clean = evaluate.predict(oracle.logits_fn, oracle_params, x_eval)
        rows = [records.row("oracle", "accuracy", float(np.mean(oracle_clean == y_eval)), len(y_eval),
                            seconds=exp.seconds())]
        oracle_api = api.PredictionAPI(api.flax_predictor(oracle.logits_fn, oracle_params), mode=self.output,
                                       budget=self.budget, seed=int(exp.rng("api").integers(2**31)))

        def ask(x):  # the attacker learns labels only, whatever the output mode
            answer = oracle_api.query(x)
            return answer if answer.ndim == 1 else answer.argmax(axis=1).astype(np.int32)

        suite = evaluate.build_suite(suite_cfg.attacks, suite_cfg.norm, list(suite_cfg.eps))
        sub_spec = self.substitute
        substitute = exp.build_model(exp.key("substitute"), partial(models.MODELS[sub_spec.arch], **sub_spec.model_args))
        sub_params = substitute.params
        failure = None
        x_sub = x_seed
        try:
            y_sub = ask(x_sub)
            for r in range(int(self.rounds)):
                started = exp.seconds()
                sub_params = fit_copy(substitute.logits_fn, sub_params, x_sub, y_sub, epochs=sub_spec.epochs,
                                      batch_size=sub_spec.batch_size, learning_rate=sub_spec.learning_rate,
                                      key=jax.random.fold_in(exp.key("substitute"), r + 1), progress=exp.progress)
                sub_acc = evaluate.accuracy(substitute.logits_fn, sub_params, x_eval, y_eval)
                rows.append(records.row("substitute", "accuracy", sub_acc, len(y_eval), round=r + 1,
                                        queries=oracle_api.queries, train_size=len(y_sub),
                                        seconds=exp.seconds() - started))
                correct = oracle_clean == y_eval
                for a_i, ((eps, attack_name), attack) in enumerate(suite.items()):
                    x_adv = evaluate.craft(attack, substitute.logits_fn, sub_params, x_eval, y_eval, suite_cfg.norm,
                                           eps, jax.random.fold_in(jax.random.fold_in(exp.key("attack"), r), a_i),
                                           batch_size=suite_cfg.batch_size)
                    pred = evaluate.predict(oracle.logits_fn, oracle_params, x_adv)  # scored directly, not a query
                    common = dict(norm=suite_cfg.norm, eps=eps, attack=attack_name, round=r + 1,
                                  queries=oracle_api.queries)
                    rows.append(records.row("transfer", "oracle_accuracy", float(np.mean(pred == y_eval)),
                                            len(y_eval), **common))
                    rows.append(records.row("transfer", "error_rate", float(np.mean(pred[correct] != y_eval[correct])),
                                            int(correct.sum()), **common))
                print(f"blackbox: round {r + 1}: {len(y_sub)} labelled images, {oracle_api.queries} queries, "
                      f"substitute accuracy {sub_acc:.4f}", file=sys.stderr)
                if r + 1 < int(self.rounds):  # Jacobian-based dataset augmentation, labelled by the oracle
                    step = int(self.first_sign) * float(self.lmbda) * (-1) ** (r // int(self.flip_every))
                    x_new = jacobian_augment(substitute.logits_fn, sub_params, x_sub, y_sub, step,
                                              batch_size=suite_cfg.batch_size)
                    y_new = ask(x_new)
                    x_sub, y_sub = np.concatenate([x_sub, x_new]), np.concatenate([y_sub, y_new])
        except api.QueryBudgetExceeded as err:  # the rounds finished are recorded, then the run fails with it
            failure = err
        rows.append(records.row("api", "queries", oracle_api.queries, len(oracle_api.log), output=self.output,
                                budget=-1 if self.budget is None else int(self.budget)))
        models.save_params(exp.run_dir / "substitute.msgpack", sub_params,
                           (substitute.module.mean, substitute.module.std))
        if self.pictures:
            from bench import plots

            curve = pd.DataFrame([r for r in rows if r["evaluator"] == "transfer" and r["metric"] == "oracle_accuracy"])
            if not curve.empty:
                path = plots.query_curve(exp.run_dir / "blackbox_queries.png", curve,
                                         title="oracle accuracy on examples crafted on the substitute")
                print(f"pictures: {path}", file=sys.stderr)
        for row in rows:
            row.setdefault("split", suite_cfg.split)
        return Result(rows, history, failure)


def blackbox_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack, eps): oracle clean accuracy, final substitute accuracy, oracle accuracy on the
    transferred examples after the last round, queries; seeds averaged."""
    if frame.empty or "round" not in frame.columns:
        return pd.DataFrame()
    last = frame["round"].max()
    oracle = frame[frame.evaluator == "oracle"].value.mean()
    sub = frame[(frame.evaluator == "substitute") & (frame["round"] == last)]
    adv = frame[(frame.evaluator == "transfer") & (frame.metric == "oracle_accuracy") & (frame["round"] == last)]
    out = []
    for (attack, eps), cells in adv.groupby(["attack", "eps"], sort=False):
        out.append({"attack": attack, "eps": eps, "oracle clean %": round(100 * oracle, 2),
                    "substitute %": round(100 * sub.value.mean(), 2),
                    "oracle on transferred %": round(100 * cells.value.mean(), 2),
                    "queries": int(cells.queries.max()), "rounds": int(last), "seeds": cells.seed.nunique()})
    return pd.DataFrame(out)


def curve_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per round: queries, substitute accuracy and the oracle's accuracy on the transferred examples (in %)."""
    if frame.empty or "round" not in frame.columns:
        return pd.DataFrame()
    sub = frame[frame.evaluator == "substitute"].groupby("round").agg(queries=("queries", "max"),
                                                                      substitute=("value", "mean"))
    adv = frame[(frame.evaluator == "transfer") & (frame.metric == "oracle_accuracy")]
    adv = adv.pivot_table(index="round", columns=["attack", "eps"], values="value", aggfunc="mean")
    adv.columns = [f"oracle on {a} eps {e:g} %" for a, e in adv.columns]
    table = sub.join(adv)
    return (table.assign(substitute=100 * table.substitute).rename(columns={"substitute": "substitute %"})
            .pipe(lambda tb: tb.assign(**{c: 100 * tb[c] for c in adv.columns})).round(2).reset_index())
