"""The `theft` scenario: steal a model through its prediction API, and use the copy to attack it.

1. The victim, trained on one part of the training split (`victim_share`): the configured model and defense
   (`victim: model`), or multinomial logistic regression on pixels (`victim: logreg`, Tramer et al.'s softmax
   regression). It answers only through `bench.api.PredictionAPI` (`api.output`: probabilities, top_k,
   label, rounded; `api.defense`: noise or reverse_sigmoid, bench/api.py). 1 query = 1 input.
2. The thief's inputs (`query_set`): `in_distribution` (the rest of the training split, never seen by the
   victim), `augmented` (those and `augment` randomly shifted and rotated copies of each: mnist5k's 2,000
   held-out images give a 10,000-image pool), `other` (the other offline dataset resized to the victim's
   input: scikit-learn digits for an mnist5k victim and back), `uniform` (uniform random images, as Tramer
   et al.), or `synthetic` (Papernot et al.'s Jacobian-based augmentation from `seeds` in-distribution
   images, grown with a copy trained along the way). The largest budget's inputs are asked once; budget B
   uses the first B answers. The API's budget is the largest budget: 1 query = 1 input, counted by the API.
3. Extraction (`method`):
   - `equations` (Tramer, Zhang, Juels, Reiter & Ristenpart 2016, "Stealing Machine Learning Models via
     Prediction APIs"): softmax regression from probabilities by solving log p_i(x) - log p_0(x) =
     (w_i - w_0) x + (b_i - b_0), linear in the unknowns, by least squares over the queries (exact up to the
     softmax's shift invariance once there are d + 1 independent queries; their count is c (d + 1));
   - `functional` (Jagielski et al. 2020; Carlini, Jagielski & Mironov 2020; bench/extraction.py): the
     weights of a one-hidden-layer ReLU victim (`model=mlp model.hidden=[h]`) up to the units' order and
     scale, from critical points found along random lines, with as many queries as it needs (recorded);
     rows add the largest weight error against the victim's hyperplanes and the units found and missed;
   - `copycat` (Correia-Silva et al. 2018; for an MLP victim on uniform queries with probabilities, Tramer et
     al.'s MLP extraction): a uniform random sample of the pool, a fresh copy (`copy.arch`) trained on the
     answers, soft labels when the API gives scores, with the same number of optimizer steps (`copy.steps`)
     at every budget, so the curve measures the queries, not the recipe;
   - `knockoff` (Orekondy, Schiele & Fritz 2019, bench/knockoff.py): `knockoff.policy=random` (the same
     uniform sample as copycat) or `adaptive` (a gradient bandit over the pool's actions, its classes or
     k-means clusters, rewarded by certainty, diversity and the online copy's loss, in rounds of
     `round_size` queries; synthetic: the seeds are asked first, in the budget, and the bandit chooses among
     candidates grown from them without queries); the copies per budget trained as copycat's.
4. Per budget: the copy's test accuracy, its agreement with the victim on the test split (R_test, the
   fidelity) and on uniform random inputs (R_unif), and the mean total variation distance between their
   output distributions on the test split (Tramer et al.'s three metrics; the victim's own undefended
   outputs, read directly, not through the API). With `theft_plus`: the copy as the substitute of a
   transfer attack (the suite's attacks crafted on it), the victim's error rate on those examples over the
   ones it classifies correctly clean, next to the white-box attack's on the victim itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

import jax
import numpy as np
import pandas as pd
from omegaconf import MISSING

from bench import api, data as datasets, evaluate, learners, models, records
from bench.errors import BenchError
from bench.experiment import Experiment, Result
from bench.substitute import fit_copy, jacobian_augment

VICTIMS = ("model", "logreg")
METHODS = ("equations", "copycat", "knockoff", "functional")
QUERY_SETS = ("in_distribution", "augmented", "other", "uniform", "synthetic")
POLICIES = ("random", "adaptive")
ACTIONS = ("labels", "clusters")


@dataclass
class ApiSpec:
    output: str = MISSING
    k: int = MISSING
    decimals: int = MISSING
    defense: Optional[str] = MISSING
    defense_args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CopySpec:
    arch: Optional[str] = MISSING            # bench/models.py MODELS (null: the configured model=)
    model_args: Dict[str, Any] = field(default_factory=dict)
    steps: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING


@dataclass
class KnockoffSpec:
    policy: str = MISSING                    # random | adaptive (bench/knockoff.py)
    actions: str = MISSING                   # labels (the pool's own classes) | clusters (k-means on pixels)
    clusters: int = MISSING
    round_size: int = MISSING                # queries bought per round
    bandit_lr: float = MISSING
    rewards: List[str] = field(default_factory=list)
    window: int = MISSING                    # diversity: against the mean of the last `window` answers
    online_steps: int = MISSING              # the online copy's Adam steps per round
    candidates: int = MISSING                # synthetic: the pool grown from the seeds (no queries)


@dataclass
class Theft:
    """Model theft through a prediction API: the parameters of conf/scenario/theft.yaml."""

    _target_: str = MISSING  # the yaml names this class (Hydra reads it; the schema only types it)
    name: str = "theft"
    victim: str = MISSING
    victim_share: float = MISSING
    method: str = MISSING
    query_set: str = MISSING
    budgets: List[int] = field(default_factory=list)
    seeds: int = MISSING
    lines: int = MISSING
    augment: int = MISSING
    knockoff: KnockoffSpec = field(default_factory=KnockoffSpec)
    api: ApiSpec = field(default_factory=ApiSpec)
    copy: CopySpec = field(default_factory=CopySpec)
    n_uniform: int = MISSING
    theft_plus: bool = MISSING
    pictures: bool = MISSING
    streams: ClassVar[tuple[str, ...]] = ("init", "train", "split", "queries", "copy", "api", "attack", "uniform",
                                          "pool")

    def defense_label(self, defense: str) -> str:
        return defense if self.victim == "model" else self.victim

    @staticmethod
    def table(frame: pd.DataFrame) -> pd.DataFrame:
        return theft_table(frame)

    @staticmethod
    def write_tables(frame: pd.DataFrame, out) -> list:
        out = Path(out)
        table = theft_table(frame)
        combined = combined_table(frame)
        text = ["# Model theft through prediction APIs", "",
                "Written by bench/scenarios/theft.py from the records of the runs below"
                + (f"; this file: `{_report_command()}`." if _report_command() else "."), "",
                "## Runs", "", _runs_table(frame).to_markdown(index=False), "",
                "## All methods", "",
                "One row per victim, API output and defense, extraction method and query pool, at 1,000 queries and "
                "at the run's largest budget (`queries`: inputs sent to the API, 1 query = 1 input; functional: what "
                "the extraction used). accuracy: the copy's test accuracy; R_test (fidelity) and R_unif: its "
                "agreement with the victim's top-1 on the test split and on uniform random inputs; TV: mean total "
                "variation distance to the victim's probabilities on the test split. theft++: the victim's error rate "
                "on the suite's attacks crafted on the copy (over the test examples it classifies correctly clean); "
                "white-box: the same attack crafted on the victim; Papernot: crafted on the black-box substitute "
                "of Papernot et al. 2017 (method copycat on `synthetic` queries, Jacobian augmentation from seeds, "
                "label-only API) stolen from the same victim, at its largest budget. Copies at every budget are "
                "trained from scratch with the same number of optimizer steps.", "",
                combined.to_markdown(index=False, missingval="") if not combined.empty else "(no copies)", "",
                "## Every budget", "",
                "The query-budget curves (theft_budget.png: accuracy and fidelity against queries, one line per "
                "method, pool and API setting).", "", table.to_markdown(index=False), ""]
        written = [records.atomic_write_bytes(out / "theft.md", "\n".join(text).encode()),
                   records.atomic_write_bytes(out / "theft.csv", table.to_csv(index=False).encode())]
        plot = budget_plot(frame, out / "theft_budget.png")
        return written + ([plot] if plot is not None else [])

    def _check(self, exp: Experiment) -> None:
        for what, value, allowed in (("victim", self.victim, VICTIMS), ("method", self.method, METHODS),
                                     ("query_set", self.query_set, QUERY_SETS), ("api.output", self.api.output, api.MODES)):
            if value not in allowed:
                raise BenchError(f"scenario.{what}={value}: use one of {list(allowed)}")
        if self.api.defense is not None and self.api.defense not in api.API_DEFENSES:
            raise BenchError(f"scenario.api.defense={self.api.defense}: use one of {sorted(api.API_DEFENSES)} or null")
        if not self.budgets or min(self.budgets) < 1:
            raise BenchError(f"scenario.budgets={list(self.budgets)}: give at least one budget >= 1, e.g. [100,1000]")
        if self.method == "functional" and (self.victim != "model" or self.api.output != "probabilities"):
            raise BenchError("scenario.method=functional extracts a one-hidden-layer ReLU victim from its probabilities: "
                             "set scenario.victim=model (model=mlp model.hidden=[20]) and scenario.api.output=probabilities")
        if self.method == "equations" and (self.victim != "logreg" or self.api.output != "probabilities"):
            raise BenchError("scenario.method=equations solves softmax regression from its probabilities: set "
                             "scenario.victim=logreg and scenario.api.output=probabilities (or method=copycat)")
        if not 0 < float(self.victim_share) < 1:
            raise BenchError(f"scenario.victim_share={self.victim_share} must be in (0, 1): the rest of the training "
                             "split is the thief's in-distribution pool")
        if self.method == "knockoff":
            for what, value, allowed in (("knockoff.policy", self.knockoff.policy, POLICIES),
                                         ("knockoff.actions", self.knockoff.actions, ACTIONS)):
                if value not in allowed:
                    raise BenchError(f"scenario.{what}={value}: use one of {list(allowed)}")
            from bench.knockoff import REWARDS

            if not self.knockoff.rewards or set(self.knockoff.rewards) - set(REWARDS):
                raise BenchError(f"scenario.knockoff.rewards={list(self.knockoff.rewards)}: use some of {list(REWARDS)}")
            if self.knockoff.actions == "labels" and self.query_set == "uniform":
                raise BenchError("uniform random queries have no classes: set scenario.knockoff.actions=clusters")
        if int(self.augment) < 0:
            raise BenchError(f"scenario.augment={self.augment}: the augmented copies per held-out image, >= 0")
        if self.copy.arch is not None and self.copy.arch not in models.MODELS:
            raise BenchError(f"scenario.copy.arch={self.copy.arch}: use one of {sorted(models.MODELS)} or null")

    def run(self, exp: Experiment) -> Result:
        self._check(exp)
        data, suite_cfg = exp.data, exp.suite
        order = exp.rng("split").permutation(len(data.y_train))
        cut = int(round(float(self.victim_share) * len(order)))
        own, pool = np.sort(order[:cut]), np.sort(order[cut:])
        x_test, y_test = data.split(suite_cfg.split)
        rows = []

        # 1. the victim
        started = exp.seconds()
        if self.victim == "model":
            model = exp.build_model()
            print(f"theft: training the victim on {len(own)} images", file=sys.stderr)
            v_params, _ = exp.fit(exp.objective(model), model.params, data.x_train[own], data.y_train[own],
                                  key=exp.key("train"), checkpoint="victim")
            exp.save_params(v_params, model)
            v_logits, victim_proba = model.logits_fn, api.flax_predictor(model.logits_fn, v_params)
        else:
            fitted = learners.fit("logreg", data.x_train[own], data.y_train[own], data.num_classes, seed=exp.seed,
                                  max_iter=1000)
            v_logits, v_params, victim_proba = fitted.logits_fn, fitted.params, fitted.predict_proba
        rows.append(records.row("train", "seconds", exp.seconds() - started, len(own), target="victim"))
        p_test = victim_proba(x_test)
        rows.append(records.row("victim", "accuracy", float(np.mean(p_test.argmax(1) == y_test)), len(y_test)))
        defenses = ([] if self.api.defense is None
                    else [api.API_DEFENSES[self.api.defense](**self.api.defense_args)])
        top = max(int(b) for b in self.budgets)
        oracle = api.PredictionAPI(victim_proba, mode=self.api.output, k=self.api.k, decimals=self.api.decimals,
                                   defenses=defenses, seed=int(exp.rng("api").integers(2**31)),
                                   budget=None if self.method == "functional" else top)  # 1 query = 1 input
        x_unif = exp.rng("uniform").random((int(self.n_uniform), *data.image_shape), dtype=np.float32)
        p_unif = victim_proba(x_unif)

        if self.method == "functional":
            x_query, answers = None, None
            budgets = [None]
        # 2. the thief's queries, asked once for the largest budget
        copy_factory = None if self.copy.arch is None else partial(models.MODELS[self.copy.arch], **self.copy.model_args)
        fresh_copy = lambda: exp.build_model(jax.random.fold_in(exp.key("copy"), 0), copy_factory)
        history = []
        if self.method == "knockoff":
            x_query, answers, history = self._knockoff(exp, oracle, data, pool, top, fresh_copy)
            budgets = sorted(int(b) for b in self.budgets)
        elif self.method != "functional":
            x_query, answers = self._queries(exp, oracle, data, pool, top, fresh_copy)
            budgets = sorted(int(b) for b in self.budgets)
        method = f"knockoff_{self.knockoff.policy}" if self.method == "knockoff" else self.method

        # white-box reference for theft++: the suite's attacks crafted on the victim itself
        suite = evaluate.build_suite(suite_cfg.attacks, suite_cfg.norm, list(suite_cfg.eps)) if self.theft_plus else {}
        n_attack = len(y_test) if suite_cfg.n_examples is None else min(int(suite_cfg.n_examples), len(y_test))
        x_att, y_att = x_test[:n_attack], y_test[:n_attack]
        correct = p_test[:n_attack].argmax(1) == y_att
        for a_i, ((eps, name), attack) in enumerate(suite.items()):
            x_adv = evaluate.craft(attack, v_logits, v_params, x_att, y_att, suite_cfg.norm, eps,
                                   jax.random.fold_in(exp.key("attack"), a_i), batch_size=suite_cfg.batch_size)
            pred = victim_proba(x_adv).argmax(1)
            rows.append(records.row("white_box", "error_rate", float(np.mean(pred[correct] != y_att[correct])),
                                    int(correct.sum()), norm=suite_cfg.norm, eps=eps, attack=name))

        # 3. one copy per budget, from scratch
        for budget in budgets:
            started = exp.seconds()
            if self.method == "functional":
                c_logits, c_params, extra = _functional(oracle, model, v_params, data, exp.rng("copy"), self.lines)
                budget = int(extra.pop("queries"))
                xb = np.zeros((budget,))
            elif self.method == "equations":
                xb, ab = x_query[:budget], answers[:budget]
                c_logits, c_params, extra = _solve_softmax_regression(xb, ab, data.num_classes, v_params)
            else:
                xb, ab = x_query[:budget], answers[:budget]
                copy = fresh_copy()
                epochs = max(1, -(-int(self.copy.steps) // max(1, -(-budget // int(self.copy.batch_size)))))
                c_params = fit_copy(copy.logits_fn, copy.params, xb, ab, epochs=epochs,
                                    batch_size=self.copy.batch_size, learning_rate=self.copy.learning_rate,
                                    key=jax.random.fold_in(exp.key("copy"), budget), progress=exp.progress)
                c_logits, extra = copy.logits_fn, {}
            seconds = exp.seconds() - started
            q_test = _softmax(evaluate.logits(c_logits, c_params, x_test))
            q_unif = _softmax(evaluate.logits(c_logits, c_params, x_unif))
            common = dict(budget=budget, queries=budget, method=method, query_set=self.query_set,
                          api_output=self.api.output, api_defense=self.api.defense or "none")
            rows += [records.row("copy", "accuracy", float(np.mean(q_test.argmax(1) == y_test)), len(y_test),
                                 seconds=seconds, **common),
                     records.row("copy", "agreement_test", float(np.mean(q_test.argmax(1) == p_test.argmax(1))),
                                 len(y_test), **common),
                     records.row("copy", "agreement_uniform", float(np.mean(q_unif.argmax(1) == p_unif.argmax(1))),
                                 len(x_unif), **common),
                     records.row("copy", "total_variation", float(0.5 * np.abs(q_test - p_test).sum(1).mean()),
                                 len(y_test), **common)]
            rows += [records.row("copy", k, v, len(xb), **common) for k, v in extra.items()]
            for a_i, ((eps, name), attack) in enumerate(suite.items()):  # theft++: the copy as a substitute
                x_adv = evaluate.craft(attack, c_logits, c_params, x_att, y_att, suite_cfg.norm, eps,
                                       jax.random.fold_in(jax.random.fold_in(exp.key("attack"), budget), a_i),
                                       batch_size=suite_cfg.batch_size)
                pred = victim_proba(x_adv).argmax(1)
                rows.append(records.row("theft_plus", "error_rate", float(np.mean(pred[correct] != y_att[correct])),
                                        int(correct.sum()), norm=suite_cfg.norm, eps=eps, attack=name, **common))
            print(f"theft: budget {budget}: copy accuracy {np.mean(q_test.argmax(1) == y_test):.4f}, agreement "
                  f"{np.mean(q_test.argmax(1) == p_test.argmax(1)):.4f}", file=sys.stderr)
        rows.append(records.row("api", "queries", oracle.queries, len(oracle.log), output=self.api.output,
                                command=_command(), method=method, query_set=self.query_set,
                                api_output=self.api.output, api_defense=self.api.defense or "none"))
        if self.pictures:
            from bench import plots

            path = plots.budget_curves(exp.run_dir / "theft_budgets.png", pd.DataFrame(
                [r for r in rows if r["evaluator"] == "copy" and r["metric"] in ("accuracy", "agreement_test")]),
                title=f"{method}, {self.query_set} queries, API {self.api.output}"
                      + (f" + {self.api.defense}" if self.api.defense else ""))
            print(f"pictures: {path}", file=sys.stderr)
        for row in rows:
            row.setdefault("split", "none" if row["evaluator"] in ("train", "api") else suite_cfg.split)
        return Result(rows, history, None)

    def _queries(self, exp, oracle, data, pool, top, fresh_copy):
        """The thief's `top` inputs and the API's answers to them (labels, or score rows)."""
        rng = exp.rng("queries")
        if self.query_set == "in_distribution":
            if top > len(pool):
                raise BenchError(f"scenario.budgets up to {top} need that many in-distribution images, but the "
                                 f"thief's pool has {len(pool)}; lower the budgets or scenario.victim_share, or use "
                                 "query_set=augmented|uniform|synthetic|other")
            x = data.x_train[rng.permutation(pool)[:top]]
        elif self.query_set == "augmented":
            x_pool, _ = self._augmented(exp, data, pool, top)
            x = x_pool[rng.permutation(len(x_pool))[:top]]
        elif self.query_set == "uniform":
            x = rng.random((top, *data.image_shape), dtype=np.float32)
        elif self.query_set == "other":
            other = datasets.digits() if data.name != "digits" else datasets.mnist5k()
            x_other = np.concatenate([other.x_train, other.x_test])
            if top > len(x_other):
                raise BenchError(f"scenario.budgets up to {top} exceed the {len(x_other)} images of {other.name}")
            x = _resize(x_other[rng.permutation(len(x_other))[:top]], data.image_shape)
        else:  # synthetic: Jacobian-based augmentation grown with a copy trained along the way
            x = data.x_train[rng.permutation(pool)[: min(int(self.seeds), top)]]
            answers = [oracle.query(x)]
            r = 0
            while len(x) < top:
                labels = np.concatenate([_labels(a) for a in answers])
                copy = fresh_copy()
                params = fit_copy(copy.logits_fn, copy.params, x, labels, epochs=10,
                                  batch_size=self.copy.batch_size, learning_rate=self.copy.learning_rate,
                                  key=jax.random.fold_in(exp.key("copy"), 10_000 + r))
                new = jacobian_augment(copy.logits_fn, params, x, labels, 0.1 * (-1) ** (r // 3))[: top - len(x)]
                x = np.concatenate([x, new])
                answers.append(oracle.query(new))
                r += 1
            return x, _as_answers(np.concatenate(answers))
        return x, _as_answers(oracle.query(x))


    def _augmented(self, exp, data, pool, top):
        """The held-out images and `augment` randomly shifted and rotated copies of each (bench/knockoff.py),
        with the held-out images' own labels (the thief's, for Knockoff's actions)."""
        from bench import knockoff

        x, y = data.x_train[pool], data.y_train[pool]
        if top > len(x) * (1 + int(self.augment)):
            raise BenchError(f"scenario.budgets up to {top} need that many images, but the augmented pool has "
                             f"{len(x)} x (1 + {self.augment}); raise scenario.augment or lower the budgets")
        extra = knockoff.augment(x, int(self.augment), exp.rng("pool"))
        return np.concatenate([x, extra]), np.concatenate([y] * (1 + int(self.augment)))

    def _knockoff(self, exp, oracle, data, pool, top, fresh_copy):
        """Knockoff Nets (bench/knockoff.py): the pool and its actions, then random or adaptive selection of
        `top` queries (synthetic: the seeds' queries first, counted in the budget)."""
        from bench import knockoff

        spec, rng = self.knockoff, exp.rng("queries")
        bought = None
        if self.query_set == "in_distribution":
            x_pool, groups = data.x_train[pool], data.y_train[pool]
        elif self.query_set == "augmented":
            x_pool, groups = self._augmented(exp, data, pool, top)
        elif self.query_set == "other":
            other = datasets.digits() if data.name != "digits" else datasets.mnist5k()
            x_pool = _resize(np.concatenate([other.x_train, other.x_test]), data.image_shape)
            groups = np.concatenate([other.y_train, other.y_test])
        elif self.query_set == "uniform":
            x_pool, groups = exp.rng("pool").random((2 * top, *data.image_shape), dtype=np.float32), None
        else:  # synthetic: the seeds asked, then candidates grown from them by Jacobian augmentation on a copy
            seeds = data.x_train[rng.permutation(pool)[: min(int(self.seeds), top)]]
            seed_answers = _as_answers(oracle.query(seeds))
            labels = _labels(seed_answers)
            copy = fresh_copy()
            params = fit_copy(copy.logits_fn, copy.params, seeds, labels, epochs=10, batch_size=self.copy.batch_size,
                              learning_rate=self.copy.learning_rate, key=jax.random.fold_in(exp.key("copy"), 10_000))
            x_pool, groups, g = seeds, labels, 0
            while len(x_pool) < len(seeds) + int(spec.candidates):
                step = 0.1 * (-1) ** (g // 3)
                x_pool = np.concatenate([x_pool, jacobian_augment(copy.logits_fn, params, x_pool, groups, step)])
                groups, g = np.concatenate([groups, groups]), g + 1
            x_pool, groups = x_pool[len(seeds):], groups[len(seeds):]  # the candidates (the seeds are bought)
            bought = (seeds, seed_answers)
            top -= len(seeds)
        if groups is None or spec.actions == "clusters":
            groups = knockoff.kmeans(x_pool, int(spec.clusters), exp.rng("pool"))
        if top > len(x_pool):
            raise BenchError(f"scenario.budgets up to {top} exceed the {len(x_pool)} images of the {self.query_set} "
                             "pool; lower the budgets (or query_set=augmented with a larger scenario.augment)")
        ask = lambda x: _as_answers(oracle.query(x))
        print(f"theft: knockoff {spec.policy} selection of {top} queries from a pool of {len(x_pool)} "
              f"({int(groups.max()) + 1} actions)", file=sys.stderr)
        if spec.policy == "random":
            chosen = knockoff.random_selection(len(x_pool), top, ask, x_pool, rng)
        else:
            copy = fresh_copy()
            chosen = knockoff.adaptive_selection(
                x_pool, groups, top, ask, num_classes=data.num_classes, logits_fn=copy.logits_fn, params=copy.params,
                rng=rng, round_size=spec.round_size,
                learning_rate=spec.bandit_lr, rewards=list(spec.rewards), window=spec.window,
                online_steps=spec.online_steps, batch_size=self.copy.batch_size,
                copy_learning_rate=self.copy.learning_rate, bought=bought)
        x, answers = x_pool[chosen.order], chosen.answers
        if bought is not None:
            x, answers = np.concatenate([bought[0], x]), np.concatenate([bought[1], answers])
        history = [dict(h, pool=self.query_set, actions=spec.actions) for h in chosen.history]
        if history:
            print(f"theft: adaptive policy after {history[-1]['queries']} queries: "
                  + " ".join(f"{p:.2f}" for p in history[-1]["policy"]), file=sys.stderr)
        return x, _as_answers(answers), history


def _command() -> str:
    """The command line of this run: `python -m bench` and the job's own overrides (one job of a sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(["python -m bench", *HydraConfig.get().overrides.task])
    except Exception:  # not under Hydra (tests)
        return " ".join(["python -m bench", *sys.argv[1:]])


def _as_answers(answer):
    """Integer labels (label-only API) or float score rows, as the copy trains on them."""
    return answer.astype(np.int32) if answer.ndim == 1 else answer.astype(np.float32)


def _functional(oracle, model, v_params, data, rng, lines):
    """Functionally equivalent extraction through the API (bench/extraction.py), scored against the victim's
    first layer written in pixel space (its normalisation folded in)."""
    from bench import extraction

    layers = sorted(k for k in v_params if k.startswith("Dense_"))
    if len(layers) != 2 or any(k.startswith("Conv") for k in v_params):
        raise BenchError("scenario.method=functional needs a victim with one hidden ReLU layer: model=mlp "
                         "model.hidden=[20] (this one has layers " + ", ".join(sorted(v_params)) + ")")
    shape = data.image_shape

    def query(flat):
        probs = np.asarray(oracle.query(flat.reshape(len(flat), *shape).astype(np.float32)), np.float64)
        with np.errstate(divide="ignore"):
            logp = np.where(probs > 0, np.log(np.where(probs > 0, probs, 1.0)), np.nan)  # saturated: unknown
        return logp[:, 1:] - logp[:, :1]

    d = int(np.prod(shape))
    net = extraction.extract_relu_net(query, d, rng, lines=int(lines))
    kernel, bias = (np.asarray(v_params[layers[0]][k], np.float64) for k in ("kernel", "bias"))
    mean = np.tile(np.asarray(model.module.mean, np.float64), d // len(model.module.mean))
    std = np.tile(np.asarray(model.module.std, np.float64), d // len(model.module.std))
    w1 = (kernel / std[:, None]).T                      # (h, d) in pixel units
    b1 = bias - (mean / std) @ kernel
    error, missing = extraction.weight_error(net, w1, b1)
    w2 = np.vstack([np.zeros((1, len(net.b1))), net.w2])  # class 0's logit is the reference: 0
    b2 = np.concatenate([[0.0], net.b2])
    params = {"w1": jax.numpy.asarray(net.w1, jax.numpy.float32), "b1": jax.numpy.asarray(net.b1, jax.numpy.float32),
              "w2": jax.numpy.asarray(w2, jax.numpy.float32), "b2": jax.numpy.asarray(b2, jax.numpy.float32)}
    return _relu_logits, params, {"queries": net.queries, "max_weight_error": error, "units_missing": float(missing),
                                  "units_found": float(len(net.b1)), "units_victim": float(len(b1))}


def _relu_logits(params, x):
    flat = jax.numpy.reshape(x, (x.shape[0], -1))
    return jax.nn.relu(flat @ params["w1"].T + params["b1"]) @ params["w2"].T + params["b2"]


def _labels(answer):
    return answer.astype(np.int32) if answer.ndim == 1 else answer.argmax(1).astype(np.int32)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _resize(x, shape):
    import jax.image

    h, w, c = shape
    if x.shape[-1] != c:
        x = x.mean(axis=-1, keepdims=True) if c == 1 else np.repeat(x, c, axis=-1)
    out = jax.image.resize(x, (len(x), h, w, c), method="linear")
    return np.clip(np.asarray(out), 0.0, 1.0).astype(np.float32)


def _solve_softmax_regression(x, probs, num_classes, victim_params):
    """Tramer et al.'s equation solving for softmax regression: least squares on the log-probability ratios to
    class 0. Returns the copy's (logits_fn, params) and, against the victim's parameters (shifted the same way),
    the largest absolute parameter error."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    design = np.concatenate([flat, np.ones((len(flat), 1))], axis=1)
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-300, None))
    ratios = logp - logp[:, :1]
    solution, *_ = np.linalg.lstsq(design, ratios, rcond=None)   # (d + 1, classes)
    w, b = solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)
    params = {"w": jax.numpy.asarray(w), "b": jax.numpy.asarray(b)}
    v_w, v_b = np.asarray(victim_params["w"], np.float64), np.asarray(victim_params["b"], np.float64)
    error = max(np.abs((v_w - v_w[:1]) - w).max(), np.abs((v_b - v_b[0]) - b).max())
    return learners.linear_logits, params, {"max_param_error": float(error)}


def _variants(frame: pd.DataFrame) -> pd.DataFrame:
    """Knockoff's adaptive runs named with their bandit step size (from each run's recorded config), so runs
    with different settings are never averaged together."""
    if "method" not in frame or "config" not in frame or not (frame.method == "knockoff_adaptive").any():
        return frame
    import json

    lr = {c: json.loads(c).get("scenario", {}).get("knockoff", {}).get("bandit_lr")
          for c in frame.loc[frame.method == "knockoff_adaptive", "config"].unique()}
    frame = frame.copy()
    adaptive = frame.method == "knockoff_adaptive"
    frame.loc[adaptive, "method"] = [f"knockoff_adaptive lr={lr[c]:g}" for c in frame.loc[adaptive, "config"]]
    return frame


def theft_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows: victim, API output and defense, method, query set, budget; columns: accuracy, R_test, R_unif, TV,
    theft++ success next to the white-box attack's (in %). Seeds averaged: the victim's accuracy and the
    white-box attack over the same runs as the copy's numbers in that row."""
    frame = _variants(frame)
    copy = frame[frame.evaluator == "copy"]
    if copy.empty:
        return pd.DataFrame()
    keys = ["dataset", "defense", "api_output", "api_defense", "method", "query_set", "budget"]
    wide = copy.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean").reset_index()
    wide["budget"] = wide["budget"].astype(int)
    for column in ("max_param_error", "max_weight_error"):  # equations / functional: against the victim's
        if column in wide:
            wide[column] = wide[column].map(lambda v: "" if v != v else f"{v:.1e}")
    names = {"accuracy": "accuracy %", "agreement_test": "R_test %", "agreement_uniform": "R_unif %",
             "total_variation": "TV"}
    for metric, label in names.items():
        if metric in wide:
            wide[label] = (wide.pop(metric) * (1 if metric == "total_variation" else 100)).round(4 if label == "TV" else 2)
    runs = copy[keys + ["run_id"]].drop_duplicates()  # which runs each row averages
    runs = runs.assign(budget=runs.budget.astype(int))

    def per_row(cells, label):  # a per-run number (victim, white-box) averaged over each row's runs
        joined = runs.merge(cells[["run_id", "value"]], on="run_id")
        return (100 * joined.groupby(keys)["value"].mean()).round(2).rename(label).reset_index()

    plus = frame[frame.evaluator == "theft_plus"]
    if not plus.empty:
        attacks = plus.groupby(keys + ["attack", "eps"])["value"].mean().reset_index()
        attacks["budget"] = attacks["budget"].astype(int)
        white = frame[frame.evaluator == "white_box"]
        for (attack, eps), cells in attacks.groupby(["attack", "eps"]):
            label = f"theft++ {attack} {eps:g} %"
            wide = wide.merge(cells[keys + ["value"]].rename(columns={"value": label}), on=keys, how="left")
            wide[label] = (100 * wide[label]).round(2)
            reference = white[(white.attack == attack) & (white.eps == eps)]
            wide = wide.merge(per_row(reference, f"white-box {attack} {eps:g} %"), on=keys, how="left")
    wide = wide.merge(per_row(frame[frame.evaluator == "victim"], "victim %"), on=keys, how="left")
    wide.insert(2, "victim %", wide.pop("victim %"))
    return wide.rename(columns={"defense": "victim"})


_METHOD_NAMES = {"equations": "equations", "copycat": "copycat", "knockoff_random": "knockoff random",
                 "knockoff_adaptive": "knockoff adaptive", "functional": "functional"}


def _method_name(method: str, query_set: str, api_output: str) -> str:
    if method == "copycat" and query_set == "synthetic" and api_output == "label":
        return "papernot (jacobian)"
    if isinstance(method, str) and method.startswith("knockoff_adaptive "):
        return f"knockoff adaptive ({method.split(' ', 1)[1]})"
    return _METHOD_NAMES.get(method, method)


def _api_name(output: str, defense: str) -> str:
    return output if defense in ("none", None) else f"{output} + {defense}"


def combined_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The one table over all methods: each (victim, API, method, pool) at 1,000 queries and at its largest
    budget; theft++ next to the white-box attack and Papernot's black-box substitute on the same victim."""
    wide = theft_table(frame)
    if wide.empty:
        return wide
    group = ["dataset", "victim", "api_output", "api_defense", "method", "query_set"]
    largest = wide.groupby(group)["budget"].transform("max")
    wide = wide[(wide.budget == largest) | (wide.budget == 1000)].copy()
    papernot = wide[(wide.method == "copycat") & (wide.query_set == "synthetic") & (wide.api_output == "label")
                    & (wide.api_defense == "none")]
    papernot = papernot[papernot.budget == papernot.groupby(["dataset", "victim"])["budget"].transform("max")]
    out = pd.DataFrame({
        "dataset": wide.dataset, "victim": wide.victim, "victim %": wide["victim %"],
        "API": [_api_name(o, d) for o, d in zip(wide.api_output, wide.api_defense)],
        "method": [_method_name(m, q, o) for m, q, o in zip(wide.method, wide.query_set, wide.api_output)],
        "pool": wide.query_set, "queries": wide.budget})
    frame = _variants(frame)
    copy = frame[(frame.evaluator == "copy") & frame.metric.isin(["accuracy", "agreement_test"])]
    keys = ["dataset", "defense", "api_output", "api_defense", "method", "query_set", "budget"]
    spread = copy.groupby(keys + ["metric"])["value"].std().unstack("metric").reset_index()  # NaN for one seed
    seeds = copy.groupby(keys)["seed"].nunique().rename("seeds").reset_index()
    spread = spread.merge(seeds, on=keys).rename(columns={"defense": "victim"})
    spread["budget"] = spread["budget"].astype(int)
    lookup = wide[["dataset", "victim", "api_output", "api_defense", "method", "query_set", "budget"]].merge(
        spread, how="left", on=["dataset", "victim", "api_output", "api_defense", "method", "query_set", "budget"])
    lookup.index = wide.index
    out["seeds"] = lookup["seeds"]
    for column in ("accuracy %", "R_test %", "R_unif %", "TV", "units_found", "units_victim", "max_weight_error",
                   "max_param_error"):
        if column in wide:
            out[column] = wide[column]
        sd = {"accuracy %": "accuracy", "R_test %": "agreement_test"}.get(column)
        if sd and sd in lookup and lookup[sd].notna().any():
            out[column.replace(" %", " sd")] = (100 * lookup[sd]).round(2)
    # the attacks as columns, at the largest epsilon each victim was attacked at (one eps column)
    plus = [c for c in wide.columns if c.startswith("theft++ ")]
    parsed = [(c, *c[len("theft++ "):-2].rsplit(" ", 1)) for c in plus]  # (column, attack, eps)
    eps = pd.Series(np.nan, index=wide.index)
    for column, _, e in parsed:
        eps = eps.where(~(wide[column].notna() & ~(eps >= float(e))), float(e))
    if plus:
        out["eps"] = eps
    for attack in dict.fromkeys(a for _, a, _ in parsed):
        for prefix, source in (("theft++", wide), ("white-box", wide), ("Papernot", None)):
            values = pd.Series(np.nan, index=wide.index)
            for column, a, e in parsed:
                if a != attack:
                    continue
                label = f"{prefix} {a} {e} %"
                if source is not None:
                    cell = source.get(label)
                elif not papernot.empty:
                    ref = papernot.set_index(["dataset", "victim"])[column]
                    cell = pd.Series([ref.get((d, v)) for d, v in zip(wide.dataset, wide.victim)], index=wide.index,
                                     dtype=float)
                else:
                    cell = None
                if cell is not None:
                    values = values.where(eps != float(e), cell)
            if values.notna().any():
                out[f"{prefix} {attack} %"] = values
    order = {"equations": 0, "functional": 1, "copycat": 2, "papernot (jacobian)": 3, "knockoff random": 4,
             "knockoff adaptive": 5}
    out = out.assign(_m=out.method.map(lambda m: order.get(m.split(" (")[0], 9))).sort_values(
        ["dataset", "victim", "_m", "pool", "API", "queries"]).drop(columns="_m")
    for column in ("units_found", "units_victim"):
        if column in out:
            out[column] = out[column].map(lambda v: "" if v != v else f"{int(v)}")
    out = out.dropna(axis=1, how="all").reset_index(drop=True)
    return out.astype(object).where(out.notna(), None)  # blank cells, not "nan"


def _runs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run's command (recorded by the run itself), method, pool, API and queries spent."""
    runs = _variants(frame)[lambda f: f.evaluator == "api"]
    if "command" not in runs:
        return pd.DataFrame({"run_id": runs.run_id})
    cells = []
    for _, r in runs.iterrows():
        seconds = frame[(frame.run_id == r.run_id) & (frame.evaluator.isin(["train", "copy"]))]["seconds"].sum()
        cells.append({"dataset": r.dataset, "method": _method_name(r.get("method"), r.get("query_set"), r.get("api_output")),
                      "pool": r.get("query_set"), "API": _api_name(r.get("api_output"), r.get("api_defense")),
                      "seed": int(r.seed), "queries": int(r.value), "train + extract s": round(float(seconds)),
                      "command": f"`{r.command}`" if isinstance(r.command, str) else ""})
    return pd.DataFrame(cells).sort_values(["dataset", "method", "pool", "API", "seed"]).reset_index(drop=True)


def _report_command() -> str:
    """`python -m bench.report ...` when this table is written by bench.report's command line."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "bench.report":
        return " ".join(["python -m bench.report", *sys.argv[1:]])
    return ""


def budget_plot(frame: pd.DataFrame, path: Path):
    """Accuracy and fidelity (R_test) against queries, log x, one line per method, pool and API setting;
    one row of two panels per dataset. None when no run has two budgets."""
    from bench.plots import _log_ticks, _pyplot, _save

    copy = _variants(frame)[lambda f: (f.evaluator == "copy") & f.metric.isin(["accuracy", "agreement_test"])]
    if copy.empty:
        return None
    keys = ["method", "query_set", "api_output", "api_defense"]
    datasets_ = [d for d, cells in copy.groupby("dataset") if cells.groupby(keys)["budget"].nunique().max() > 1]
    if not datasets_:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(datasets_), 2, figsize=(11, 4.2 * len(datasets_)), squeeze=False)
    for row, name in zip(axes, datasets_):
        cells = copy[copy.dataset == name]
        for (method, pool, output, defense), lines in cells.groupby(keys):
            if lines["budget"].nunique() < 2:
                continue
            label = f"{_method_name(method, pool, output)}, {pool}, {_api_name(output, defense)}"
            style = "--" if defense not in ("none", None) else ("-" if output == "probabilities" else "-.")
            marker = {"copycat": "o", "knockoff_random": "x"}.get(method, "s" if "adaptive" in method else "^")
            for ax, metric in zip(row, ("accuracy", "agreement_test")):
                points = lines[lines.metric == metric].groupby("budget")["value"].mean()
                ax.plot(points.index, 100 * points.to_numpy(), style, marker=marker, markersize=4, label=label,
                        alpha=0.85)
        for ax, what in zip(row, ("copy's test accuracy %", "fidelity R_test %")):
            _log_ticks(ax, cells["budget"])
            ax.set_xlabel("queries (1 query = 1 input)")
            ax.set_ylabel(what)
            ax.set_title(f"{name}: {what}", fontsize=9)
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
