"""Square's schedule in `suite=autoattack`: raw iterations (Croce & Hein's standard version) against the schedule
counted out of 10,000 over the query budget (torchattacks' AutoAttack); writes results/square_schedule.md.

    python scripts/square_schedule.py                  # both cnn_small models of scripts/peer_autoattack.py, 3 seeds
    python scripts/square_schedule.py --seeds 1 --out /tmp/square_schedule.md

For each model (trained as scripts/peer_autoattack.py trains it, the same seed): APGD-CE then APGD-T from
conf/suite/autoattack.yaml, cumulatively, on the first 1,000 mnist5k test images; then Square (5,000 queries) on the
examples still robust, once with each schedule and each seed, the same examples and key for both schedules. It counts
the examples each schedule leaves robust and those only one of them breaks. No torch needed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bench import data as bench_data
from bench import evaluate
from bench.attacks import square
from bench.contracts import capabilities
from bench.records import atomic_write_bytes

from aa_models import train_model  # noqa: E402  (scripts/)

CONF = Path(__file__).resolve().parents[1] / "conf"


def apgd_factories():
    import bench.schema  # noqa: F401  (registers the config schemas)

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=["suite=autoattack"])
    return {name: instantiate(a) for name, a in cfg.suite.attacks.items() if name != "square"}, cfg.suite


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="Square runs per schedule (keys 100, 101, ...)")
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10, help="standard training epochs")
    parser.add_argument("--at-epochs", type=int, default=20, help="PGD adversarial training epochs")
    parser.add_argument("--out", default="results/square_schedule.md")
    args = parser.parse_args(argv)
    started, load = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()[0]
    d = bench_data.mnist5k()
    x, y = d.x_test[: args.n_examples], d.y_test[: args.n_examples]
    factories, suite_cfg = apgd_factories()
    batch = int(suite_cfg.batch_size)
    rows = []
    for defense, eps, epochs in (("standard", 0.1, args.epochs), ("pgd_at", 0.3, args.at_epochs)):
        logits_fn, params = train_model(d, 0, defense, epochs)
        suite = evaluate.build_suite(factories, "linf", [eps])
        outcome = evaluate.run_suite(logits_fn, params, x, y, suite, "linf", jax.random.key(0), batch_size=batch,
                                     progress=False, cumulative=True)
        left = np.flatnonzero(outcome.per_example[(eps, "worst_case")])
        print(f"[{defense}] {len(left)} of {len(y)} robust after APGD-CE and APGD-T", flush=True)
        for seed in range(args.seeds):
            robust, seconds = {}, {}
            for rescale in (False, True):
                attack = square(eps=eps, n_queries=5000, rescale_schedule=rescale)
                t0 = time.perf_counter()
                robust[rescale] = evaluate.attack_examples(attack, logits_fn, params, x, y, left, "linf", eps,
                                                           jax.random.key(100 + seed),
                                                           batch * capabilities(attack).batch_scale, pad=True)
                seconds[rescale] = time.perf_counter() - t0
            rows.append((defense, eps, len(left), seed, int(robust[False].sum()), int(robust[True].sum()),
                         int((~robust[False] & robust[True]).sum()), int((robust[False] & ~robust[True]).sum()),
                         seconds[False], seconds[True]))
            print(f"[{defense}] seed {seed}: robust raw {rows[-1][4]}, rescaled {rows[-1][5]}", flush=True)
    lines = [
        "# Square's schedule: raw iterations vs counted out of 10,000 over the budget",
        "",
        f"Command: `python scripts/square_schedule.py{' ' + ' '.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ''}`, "
        f"{started:%Y-%m-%d %H:%M} UTC, load average {load:.1f} at the start.",
        "",
        f"The first {len(y)} mnist5k test images; cnn_small trained as in scripts/peer_autoattack.py; APGD-CE and "
        "APGD-T of conf/suite/autoattack.yaml first, cumulatively; then Square (L-inf, 5,000 queries, p_init 0.8) on "
        "the examples they left robust, with each schedule, the same examples and key.",
        "",
        "| model | eps | left after APGD | seed | robust, raw | robust, rescaled | only raw breaks | only rescaled breaks "
        "| raw s | rescaled s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| cnn_small {m} | {e} | {n} | {s} | {a} | {b} | {ra} | {rb} | {ta:.1f} | {tb:.1f} |"
          for m, e, n, s, a, b, ra, rb, ta, tb in rows],
    ]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
