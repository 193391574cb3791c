"""The `evasion` scenario: train a (defended) model, attack it at test time, certify it where the suite asks.

1. train the configured model with the configured defense (or load `load_params`), with the
   catastrophic-overfitting monitor when `train.overfit_check.enabled` (bench/overfitting.py), which
   reads the validation split when there is one (`validation=N`);
2. the attack suite at every epsilon on `suite.split` (test, or validation for tuning), per-example
   worst case (bench/evaluate.py), then the gradient-masking sanity checks (bench/sanity.py); every
   row says which split it was measured on (`split`);
3. with `suite.certifiers`: certified accuracy next to robust accuracy, and the soundness check
   (an example certified and broken fails the run, after its records are written);
4. with `scenario.transfer_check.surrogate` (an architecture of bench/models.py): a surrogate trained
   independently with standard training; the suite's gradient attacks crafted on it flag the evaluation
   when they break examples the white-box attacks did not (bench/sanity.py, `transfer_check`).
Table: robustness vs accuracy (bench/report.py, `evasion_table`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import jax
import pandas as pd
from omegaconf import MISSING

from bench import checkpoint, evaluate, models, overfitting, records, sanity, train
from bench.certify import evaluate as certify_eval
from bench.experiment import Experiment, Result


@dataclass
class TransferCheck:
    """A surrogate model to transfer the suite's attacks from (null surrogate: no transfer check)."""

    surrogate: Optional[str] = None   # an architecture of bench/models.py (MODELS)
    epochs: Optional[int] = None      # default train.epochs


@dataclass
class Evasion:
    """Test-time attacks (and certifiers) against a trained model. The attacks live in `suite:`."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "evasion"
    transfer_check: TransferCheck = field(default_factory=TransferCheck)
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "attack", "surrogate")

    @staticmethod
    def defense_label(defense: str) -> str:
        return defense

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        from bench.report import evasion_table

        return evasion_table(frame, with_ci=True)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        from bench.report import write_tables

        return list(write_tables(frame, out).values())

    def run(self, exp: Experiment) -> Result:
        suite_cfg, data = exp.suite, exp.data
        suite = evaluate.build_suite(suite_cfg.attacks, suite_cfg.norm, list(suite_cfg.eps))
        # a loaded model is rebuilt with the normalization it was trained with, whatever data it meets here
        model = exp.build_model(normalization=models.saved_normalization(exp.load_params) if exp.load_params else None)
        logits_fn, params = model.logits_fn, model.params
        t = exp.train
        x_train, y_train = data.x_train, data.y_train
        eval_fns = [lambda p: {"test_accuracy": evaluate.accuracy(logits_fn, p, data.x_test, data.y_test)}]
        if data.y_val is not None:
            eval_fns.append(lambda p: {"validation_accuracy": evaluate.accuracy(logits_fn, p, data.x_val, data.y_val)})
        oc = t.overfit_check
        monitor = None
        if oc and oc["enabled"]:  # the validation split, else held out from the end of the training split
            if data.y_val is not None:
                x_hold, y_hold = data.x_val[: oc["n_examples"]], data.y_val[: oc["n_examples"]]
            else:
                x_train, y_train, x_hold, y_hold = overfitting.split_holdout(x_train, y_train, oc["n_examples"])
            monitor = overfitting.overfit_monitor(
                logits_fn, x_hold, y_hold, jax.random.fold_in(exp.key("train"), 1), norm=oc["norm"], eps=oc["eps"],
                steps=oc["steps"], step_size=oc["step_size"], max_drop=oc["max_drop"], floor=oc["floor"],
                max_gap=oc["max_gap"])
            eval_fns.append(monitor.eval_fn)
        x_eval, y_eval = data.split(suite_cfg.split)
        if suite_cfg.n_examples is not None:
            x_eval, y_eval = x_eval[: suite_cfg.n_examples], y_eval[: suite_cfg.n_examples]

        checkpointer, history = None, []
        if exp.load_params:
            params = models.load_params(exp.load_params, params)
        else:
            checkpointer = exp.checkpointer()
            optimizer = t.optimizer(t.epochs * train.steps_per_epoch(len(y_train), t.batch_size))
            params, history = train.train(
                exp.objective(model), params, optimizer, x_train, y_train, epochs=t.epochs, batch_size=t.batch_size,
                key=exp.key("train"), progress=exp.progress, checkpointer=checkpointer,
                eval_fn=lambda p: {k: v for f in eval_fns for k, v in f(p).items()})
            exp.save_params(params, model)
        train_seconds = exp.seconds()
        train_rows = []
        if checkpointer is not None and checkpointer.resumed_from is not None:
            # resumed from a checkpoint: the training seconds above cover only the part this process ran
            train_rows.append(records.row("train", "resumed_from_step", checkpointer.resumed_from, len(y_train)))
        if history and history[-1].get("stop"):  # early stop (catastrophic overfitting): keep it in the records
            print(f"stopped after epoch {history[-1]['epoch']}: {history[-1]['stop']}", file=sys.stderr)
            if oc["restore"] and monitor.healthy_params() is not None:  # the model before the collapse, as Wong et al.
                params = monitor.healthy_params()
                exp.save_params(params, model)
            train_rows.append(records.row("train", "stopped_epoch", history[-1]["epoch"], len(y_train),
                                          seconds=train_seconds))

        attack_key = exp.key("attack")
        cache_dir = None if exp.work_dir is None else exp.work_dir / "eval" / checkpoint.params_digest(params)
        outcome = evaluate.run_suite(logits_fn, params, x_eval, y_eval, suite, suite_cfg.norm, attack_key,
                                     batch_size=suite_cfg.batch_size, progress=exp.progress,
                                     cumulative=suite_cfg.cumulative, cache_dir=cache_dir)
        rows = list(outcome.rows)
        if data.y_val is not None:
            rows.append(records.row("clean", "validation_accuracy",
                                    evaluate.accuracy(logits_fn, params, data.x_val, data.y_val), len(data.y_val),
                                    split="validation"))
        if suite_cfg.sanity:
            rows += sanity.sanity_checks(logits_fn, params, x_eval, y_eval, suite, suite_cfg.norm,
                                         jax.random.fold_in(attack_key, 0x5A17), outcome,
                                         batch_size=suite_cfg.batch_size, n_examples=suite_cfg.sanity_examples,
                                         progress=exp.progress)
        if self.transfer_check.surrogate is not None:
            rows += self._transfer_check(exp, logits_fn, params, x_eval, y_eval, suite, outcome)
        rows.append(records.row("train", "seconds", train_seconds, len(data.y_train), seconds=train_seconds))
        rows += train_rows
        failure = None
        if suite_cfg.certifiers:  # the sandwich: certified (lower bound) next to attacked (upper bound) accuracy
            certified_rows, certified = certify_eval.evaluate_certified(
                model.module, params, x_eval, y_eval, suite_cfg.certifiers, suite_cfg.norm, list(suite_cfg.eps),
                batch_size=suite_cfg.certify_batch_size)
            rows += certified_rows
            try:
                certify_eval.soundness_check(certified, outcome.per_example)
                failures = 0
            except certify_eval.SoundnessFailure as err:
                failure = err
                failures = sum(f["count"] for f in err.failures)
            rows.append(records.row("soundness", "failures", failures, len(y_eval), norm=suite_cfg.norm))
        for row in rows:  # which split each number was measured on: the test split is for reported numbers only
            row.setdefault("split", "none" if row["evaluator"] == "train" else suite_cfg.split)
        return Result(rows, history, failure)

    def _transfer_check(self, exp, logits_fn, params, x_eval, y_eval, suite, outcome) -> list[dict]:
        """Train the surrogate (standard training, its own streams) and run bench.sanity.transfer_check."""
        from functools import partial

        from bench.defenses import standard
        from bench.errors import BenchError

        check, t = self.transfer_check, exp.train
        if check.surrogate not in models.MODELS:
            raise BenchError(f"scenario.transfer_check.surrogate={check.surrogate}: unknown; use one of "
                             f"{sorted(models.MODELS)} (or null: no transfer check)")
        surrogate = exp.build_model(exp.key("surrogate"), partial(models.MODELS[check.surrogate]))
        epochs = t.epochs if check.epochs is None else int(check.epochs)
        print(f"transfer check: training the surrogate ({check.surrogate}, {epochs} epochs)", file=sys.stderr)
        s_params, _ = exp.fit(standard(surrogate.logits_fn), surrogate.params, exp.data.x_train, exp.data.y_train,
                              key=jax.random.fold_in(exp.key("surrogate"), 1), checkpoint="surrogate", epochs=epochs)
        return sanity.transfer_check(logits_fn, params, x_eval, y_eval, suite, exp.suite.norm,
                                     jax.random.fold_in(exp.key("surrogate"), 2), outcome,
                                     (surrogate.logits_fn, s_params), batch_size=exp.suite.batch_size,
                                     progress=exp.progress)
