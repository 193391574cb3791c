"""Parity: our `suite=autoattack` (JAX) against torchattacks' AutoAttack, standard version (PyTorch).

Same weights, same 1,000 mnist5k test images, same machine, one process:
  (a) a standard cnn_small (Adam, `--epochs` epochs), attacked at L-inf 0.1;
  (b) a PGD-trained cnn_small (bench.defenses.pgd_at with the madry_mnist_reduced recipe: PGD-10 at eps 0.3,
      eps warmed up over the first quarter of training, `--at-epochs` epochs), attacked at L-inf 0.3.
For each, the flax weights are exported to the same PyTorch network (kernels HWIO -> OIHW; flax flattens
NHWC, so the first Linear's input axis is permuted to torch's NCHW order), the logits are asserted to agree
on every test image, then both suites run:
  ours: conf/suite/autoattack.yaml composed with Hydra (APGD-CE, APGD-T 9 targets, Square 5000 queries,
        cumulative), through `bench.evaluate.run_suite`, sanity checks (`bench.sanity`) included (timed apart);
  reference: torchattacks.AutoAttack(norm="Linf", version="standard": APGD-CE, APGD-T, FAB-T, Square).
With `--rows`, the measured rows are saved as JSON after each case; `--merge A.json B.json` writes the
report from such files (used when the two cases ran as separate processes, `--only standard` / `--only pgd_at`).
Both sets of adversarial examples are checked against the threat model and scored by our model. Printed
and written to `--out` (default results/peer_autoattack.md): both robust accuracies, per-example
disagreements, wall times and their ratio (ours includes XLA compilation), versions, command and date.

torch and torchattacks are imported here only. Run with an environment that has them:
  /tmp/venv-peers/bin/python scripts/peer_autoattack.py        or        make peers-autoattack
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bench import data as bench_data
from bench import evaluate, sanity
from bench.attacks import check_threat_model
from bench.records import atomic_write_bytes

try:
    import torch
    import torchattacks

except ImportError:
    sys.exit("scripts/peer_autoattack.py needs torch and torchattacks: run it with an interpreter that has them "
             "(e.g. /tmp/venv-peers/bin/python) or `make peers-autoattack`")

from torch_twins import flax_cnn_small_to_torch, to_nchw  # noqa: E402  (scripts/, after torch)
from aa_models import train_model  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
LOGIT_ATOL = 1e-3


def assert_same_logits(logits_fn, params, net, x) -> float:
    ours = np.asarray(logits_fn(params, jnp.asarray(x)))
    with torch.no_grad():
        theirs = net(to_nchw(x)).numpy()
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff < LOGIT_ATOL, f"exported torch logits differ from flax by {diff}"
    return diff


def suite_factories():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=["suite=autoattack"])
    return {name: instantiate(a) for name, a in cfg.suite.attacks.items()}, cfg.suite


def run_ours(logits_fn, params, x, y, eps, seed, batch_size=None):
    factories, suite_cfg = suite_factories()
    batch_size = int(batch_size or suite_cfg.batch_size)
    suite = evaluate.build_suite(factories, "linf", [eps])
    key = jax.random.key(seed)
    outcome = evaluate.run_suite(logits_fn, params, x, y, suite, "linf", key, batch_size=batch_size,
                                 progress=False, cumulative=True)
    results, per_example = outcome.rows + sanity.sanity_checks(
        logits_fn, params, x, y, suite, "linf", jax.random.fold_in(key, 0x5A17), outcome,
        batch_size=batch_size, n_examples=int(suite_cfg.sanity_examples)), outcome.per_example
    attack_rows = [r for r in results if r["evaluator"] != "sanity"]
    sanity_rows = [r for r in results if r["evaluator"] == "sanity"]
    return dict(robust=per_example[(eps, "worst_case")], seconds=sum(r["seconds"] for r in attack_rows),
                log=[(r["evaluator"], r["value"], r["seconds"]) for r in attack_rows
                     if r["metric"] == "cumulative_robust_accuracy"],
                sanity_seconds=sum(r["seconds"] for r in sanity_rows),
                flags=[f"{r['metric']} ({r['reason']})" for r in sanity_rows if r["value"] > 0])


def run_reference(net, logits_fn, params, x, y, eps, seed, steps=None):
    attack = torchattacks.AutoAttack(net, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
    if steps:  # torchattacks' class default is 10 iterations for APGD, APGD-T and FAB; the paper runs 100
        for sub in attack._autoattack.attacks:
            if hasattr(sub, "steps"):
                sub.steps = int(steps)
    t0 = time.perf_counter()
    x_adv = attack(to_nchw(x), torch.from_numpy(y.astype(np.int64)))
    seconds = time.perf_counter() - t0
    x_adv = x_adv.detach().numpy().transpose(0, 2, 3, 1)
    check_threat_model(x, x_adv, "linf", eps)
    robust = evaluate.predict(logits_fn, params, x_adv) == y
    with torch.no_grad():
        robust_torch = net(to_nchw(x_adv)).argmax(1).numpy() == y
    clean = evaluate.predict(logits_fn, params, x) == y
    return dict(robust=robust & clean, robust_torch=robust_torch & clean, seconds=seconds)


def versions() -> str:
    names = ("jax", "jaxlib", "flax", "optax", "torch", "torchattacks", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _command() -> str:
    return shlex.join([Path(sys.executable).as_posix(), *sys.argv])


def report(rows, n, complete: bool, commands=None) -> str:
    """The Markdown report for the cases run so far (`commands`: the runs that measured them, when merged)."""
    lines = [
        "# Parity: our suite=autoattack vs torchattacks AutoAttack (standard)",
        "",
        *[f"Command: `{c}`  " for c in (commands or [_command()])],
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  ",
        f"Versions: {versions()}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), JAX backend "
        f"{jax.default_backend()}, torch threads {torch.get_num_threads()}  ",
        "Data: the first `examples` mnist5k test images; L-inf; robust accuracy scored by the flax model on each "
        "library's adversarial examples (torch-scored reference in brackets).",
        "",
        "| model | eps | examples | clean | ours robust | reference robust | ref breaks, we don't | we break, ref doesn't "
        "| ours s | reference s | ours / reference |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eps']:g} | {r['n']} | {r['clean']:.1%} | {r['ours']:.1%} | {r['ref']:.1%} "
                     f"({r['ref_torch']:.1%}) | {r['ref_only']} ({r['ref_only'] / r['n']:.1%}) | {r['ours_only']} "
                     f"| {r['ours_s']:.1f} | {r['ref_s']:.1f} | {r['ours_s'] / r['ref_s']:.2f} |")
    lines += ["", "Ours: APGD-CE, APGD-T (9 targets), Square (5000 queries), cumulative, one run; its time includes "
              "XLA compilation. Reference: APGD-CE, APGD-T, FAB-T, Square (torchattacks' standard AutoAttack; "
              "iterations per the command's --ref-steps, default the paper's 100). "
              "Sanity checks are timed apart and not in the ratio.", ""]
    for r in rows:
        lines.append(f"- {r['model']} at {r['eps']:g}: ours after each attack: {r['log']}; sanity checks "
                     f"{r['sanity_s']:.0f}s, flags: {r['flags']}; max |logit diff| flax vs torch {r['diff']:.1e}.")
    if not complete:
        lines += ["", "INCOMPLETE: the script was still running the remaining case when this was written."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="standard training epochs")
    parser.add_argument("--at-epochs", type=int, default=20, help="PGD adversarial training epochs")
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", choices=("standard", "pgd_at"), default=None)
    parser.add_argument("--ref-steps", type=int, default=100,
                        help="iterations of the reference's APGD, APGD-T and FAB (the paper's 100; torchattacks' "
                             "class default is 10; 0 keeps it)")
    parser.add_argument("--batch-size", type=int, default=None, help="our suite's batch size (default: the yaml's)")
    parser.add_argument("--out", default="results/peer_autoattack.md")
    parser.add_argument("--note", default="", help="a line appended to the report (e.g. why a case is smaller)")
    parser.add_argument("--rows", default=None, help="also save the measured rows as JSON here, after each case")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="run nothing: write --out from rows saved by earlier --rows runs (one run per case)")
    args = parser.parse_args(argv)
    if args.merge:
        rows = [r for path in args.merge for r in json.loads(Path(path).read_text())["rows"]]
        sources = [json.loads(Path(path).read_text())["command"] for path in args.merge]
        text = report(rows, 1000, complete=True, commands=sources) + (f"\nNote: {args.note}\n" if args.note else "")
        atomic_write_bytes(args.out, text.encode())
        print(text)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    d = bench_data.mnist5k()
    x, y = d.x_test[: args.n_examples], d.y_test[: args.n_examples]
    cases = [("standard", 0.1, args.epochs), ("pgd_at", 0.3, args.at_epochs)]
    rows = []
    for defense, eps, epochs in cases:
        if args.only and defense != args.only:
            continue
        t0 = time.perf_counter()
        logits_fn, params = train_model(d, args.seed, defense, epochs)
        print(f"[{defense}] trained {epochs} epochs in {time.perf_counter() - t0:.0f}s", flush=True)
        net = flax_cnn_small_to_torch(params, d.num_classes, d.mean, d.std)
        diff = assert_same_logits(logits_fn, params, net, x)
        clean = float(np.mean(evaluate.predict(logits_fn, params, x) == y))
        print(f"[{defense}] clean {clean:.3f}, max |logit diff| flax vs torch {diff:.2e}", flush=True)
        ours = run_ours(logits_fn, params, x, y, eps, args.seed, args.batch_size)
        print(f"[{defense}] ours: robust {ours['robust'].mean():.3f} in {ours['seconds']:.1f}s "
              f"(+{ours['sanity_seconds']:.1f}s sanity checks); log {ours['log']}; flags {ours['flags']}", flush=True)
        ref = run_reference(net, logits_fn, params, x, y, eps, args.seed, args.ref_steps)
        print(f"[{defense}] torchattacks: robust {ref['robust'].mean():.3f} (torch-scored "
              f"{ref['robust_torch'].mean():.3f}) in {ref['seconds']:.1f}s", flush=True)
        rows.append(dict(
            model=f"cnn_small {defense}", eps=eps, n=len(y), clean=clean, ours=float(ours["robust"].mean()),
            ref=float(ref["robust"].mean()), ref_torch=float(ref["robust_torch"].mean()),
            ref_only=int(np.sum(~ref["robust"] & ours["robust"])),
            ours_only=int(np.sum(ref["robust"] & ~ours["robust"])),
            ours_s=ours["seconds"], ref_s=ref["seconds"], sanity_s=ours["sanity_seconds"],
            log=", ".join(f"{n} {v:.1%} ({s:.0f}s)" for n, v, s in ours["log"]),
            flags="; ".join(ours["flags"]) or "none", diff=diff))
        if args.rows:
            atomic_write_bytes(args.rows, json.dumps(dict(command=_command(), rows=rows), indent=1).encode())
        if args.n_examples == 1000 and not args.only and len(rows) < len(cases):  # keep partial results
            atomic_write_bytes(args.out, report(rows, len(y), complete=False).encode())

    text = report(rows, len(y), complete=True)
    print(text)
    if args.n_examples == 1000 and not args.only:
        atomic_write_bytes(args.out, text.encode())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
