"""`python -m bench.certify RUN_DIR`: the sandwich for a finished run.

Loads the run's config and params, runs its attack suite (bench.evaluate), the
certifiers (the run's suite.certifiers, or --certifiers names from
conf/certify/), optionally randomized smoothing, prints clean >= empirical
robust >= certified accuracy per epsilon, writes certified_records.parquet
(record rows) into the run folder, and exits 2 on a soundness failure.

Examples:
  python -m bench.certify results/runs/DAY/TIME-mnist5k-cnn_small-ibp --eps 0.1
  python -m bench.certify RUN --certifiers ibp crown_ibp --no-attacks
  python -m bench.certify RUN --smoothing --sigma 0.25 --n 10000 --n-examples 200 --no-attacks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench import evaluate, models, records
from bench.experiment import context, prepare
from bench.certify.evaluate import evaluate_certified, evaluate_smoothing, sandwich_table, soundness_check
from bench.errors import BenchError


def _certifier_factories(names, conf_dir, from_config):
    if from_config is not None and not names:
        return dict(from_config)
    factories = {}
    for name in names or ["ibp", "crown"]:
        path = conf_dir / "certify" / f"{name}.yaml"
        if not path.is_file() or name == "smoothing":
            known = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "smoothing")
            if name == "smoothing":
                raise BenchError("smoothing is not a bound certifier; use --smoothing (with --sigma, --n)")
            raise BenchError(f"no certifier config {path}; choose from {known}")
        factories[name] = instantiate(OmegaConf.load(path))
    return factories


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.certify RUN_DIR`: attacks, certifiers and the soundness check on a run's params."""
    parser = argparse.ArgumentParser(prog="python -m bench.certify", description=main.__doc__)
    parser.add_argument("run_dir", help="a finished run: holds .hydra/config.yaml and params.msgpack")
    parser.add_argument("--eps", type=float, nargs="+", help="default: the run's suite.eps")
    parser.add_argument("--certifiers", nargs="*", help="conf/certify names (default: the run's suite.certifiers, "
                                                         "else ibp crown)")
    parser.add_argument("--n-examples", type=int, help="first N test examples (default: the run's suite.n_examples)")
    parser.add_argument("--batch-size", type=int, default=50, help="examples per bound computation")
    parser.add_argument("--no-attacks", action="store_true", help="certify only (no soundness check)")
    parser.add_argument("--smoothing", action="store_true",
                        help="also randomized smoothing (conf/certify/smoothing.yaml or the run's suite.smoothing)")
    parser.add_argument("--sigma", type=float, help="smoothing sigma (default: the config's)")
    parser.add_argument("--n", type=int, help="smoothing draws n (default: the config's)")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run_dir = Path(args.run_dir)
        config_path, params_path = run_dir / ".hydra" / "config.yaml", run_dir / "params.msgpack"
        if not config_path.is_file():
            raise BenchError(f"{config_path} not found; pass the folder of a finished `python -m bench` run")
        cfg = OmegaConf.load(config_path)
        conf_dir = Path(__file__).resolve().parents[2] / "conf"
        # the run's own setup, labels and stable config hash (bench/experiment.py), as the run recorded them
        hydra_path = run_dir / ".hydra" / "hydra.yaml"
        choices = OmegaConf.load(hydra_path).hydra.runtime.choices if hydra_path.is_file() else {}
        scenario = instantiate(cfg.scenario, _convert_="object")
        experiment = prepare(cfg, run_dir, choices, streams=("init",))
        data = experiment.data
        built = experiment.build_model(normalization=models.saved_normalization(params_path)
                                       if params_path.is_file() else None)
        model, logits_fn = built.module, built.logits_fn
        params = models.load_params(params_path, built.params)
        n = args.n_examples or experiment.suite.n_examples or len(data.y_test)
        x, y = data.x_test[:n], data.y_test[:n]
        norm, eps_list = experiment.suite.norm, args.eps or list(experiment.suite.eps)
        key = jax.random.key(args.seed)
        results, robust = [], {}
        if not args.no_attacks:
            suite = evaluate.build_suite(experiment.suite.attacks, norm, eps_list)
            outcome = evaluate.run_suite(logits_fn, params, x, y, suite, norm, key,
                                         batch_size=experiment.suite.batch_size, progress=False)
            results, robust = list(outcome.rows), outcome.per_example
        else:
            clean = evaluate.predict(logits_fn, params, x) == y
            results.append(records.row("clean", "accuracy", clean.mean(), len(y)))
        factories = _certifier_factories(args.certifiers, conf_dir, experiment.suite.certifiers or None)
        cert_results, certified = evaluate_certified(model, params, x, y, factories, norm, eps_list,
                                                     batch_size=args.batch_size)
        results += cert_results
        if args.smoothing:
            smoothing_cfg = OmegaConf.select(cfg, "suite.smoothing") or OmegaConf.load(conf_dir / "certify" / "smoothing.yaml")
            overrides = {k: v for k, v in (("sigma", args.sigma), ("n", args.n)) if v is not None}
            certify = instantiate(smoothing_cfg)(**overrides)
            smooth_results, _ = evaluate_smoothing(logits_fn, params, x, y, certify, args.radii,
                                                   jax.random.fold_in(key, 1), batch_size=smoothing_cfg.batch_size)
            results += smooth_results
        shared = context(scenario.name, scenario.defense_label(experiment.labels["defense"]), experiment)
        records.atomic_write_bytes(run_dir / "certified_records.parquet",
                                   records.make_rows(results, shared).to_parquet(index=False))
        print(sandwich_table(results).to_markdown(index=False, floatfmt=".2f"))
        for r in results:
            if r["evaluator"] == "smoothing" or r["metric"] == "certified_accuracy":
                print(f"{r['evaluator']:>15} {r['norm']:>4} {r['eps']:<5g} {r['metric']:<20} {r['value']:.4f} "
                      f"({r['seconds']:.1f} s for {r['n']})")
        if robust:
            soundness_check(certified, robust)
            print("soundness: no certified example was broken by an attack")
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
