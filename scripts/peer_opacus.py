"""Side by side: our DP-SGD (JAX, jax-privacy, dp-accounting) against Opacus (PyTorch), same everything.

What it does, in one process:
  1. loads `bench.data.mnist5k()` (4,000 training images) and initialises `cnn_small` once; the PyTorch
     twin (`scripts/torch_twins.py`) gets the same initial weights;
  2. trains both with DP-SGD on the same data with the same recipe: Poisson sampling at rate
     q = 1 / (steps per epoch) (Opacus derives q as 1 / len(data_loader), so the expected batch
     `--batch-size` should divide 4,000), clip norm `--clip`, noise multiplier `--sigma`, noise
     std sigma*clip on the clipped sum divided by the expected batch size, Adam (`--lr`), `--epochs`
     epochs. Ours: `bench.privacy.dp_sgd` (the grad hook, noisy optimizer and Poisson sampler that
     `bench.train.train` uses) in the jitted step of `bench.train.train`. Theirs:
     `opacus.PrivacyEngine.make_private(poisson_sampling=True)` with its default per-sample
     gradient hooks;
  3. times every step of both (data fetch, forward, per-example gradients, clipping, noise, update;
     ours ends with `block_until_ready`), interleaving the two trainings epoch by epoch so that load
     from other processes is shared out, and reports the median step time after the first `--warmup`
     steps (ours compiles there) and the ratio ours / theirs;
  4. reports the epsilon at delta = `--delta` of each accountant for the steps actually taken: ours
     (dp-accounting RDP and PLD, `bench.privacy.accounting`) and Opacus's (RDP, PRV), plus both
     models' test accuracy; prints a Markdown report and writes it to `--out`.

Environment: needs torch and opacus (the `peers` extra); `bench/` and the tests never import them.
`make peers-opacus PEERS_PYTHON=/tmp/venv-peers/bin/python` runs it with an environment that has them.

Usage:
  python scripts/peer_opacus.py [--epochs 3] [--batch-size 250] [--clip 1.0] [--sigma 1.1] [--lr 1e-3]
                                [--threads N] [--seed 0] [--out results/peer_opacus.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from bench import data as bench_data
from bench import evaluate, models
from bench.defenses import standard
from bench.privacy import dp_sgd, ghost
from bench.privacy import accounting
from torch_twins import copy_flax_to_torch, to_nchw, torch_cnn_small

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=250, help="expected Poisson batch; should divide 4,000")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--sigma", type=float, default=1.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each left out of the median")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "peer_opacus.md"))
    return parser.parse_args(argv)


def ours(params, logits_fn, objective, x_train, y_train, *, q, steps_per_epoch, steps, clip, sigma, lr, seed,
         clipping="per_example", module=None):
    """Our DP-SGD, one epoch per `next()`: yields (params, per-step seconds of that epoch, steps so far).
    `clipping`: "per_example" (jax-privacy's clipped_grad) or "ghost" (bench/privacy/ghost.py, on `module`: what
    `scenario=privacy` uses for cnn_small by default; the same clipped sum, tests/test_privacy.py)."""
    n = len(y_train)
    optimizer = dp_sgd.dp_optimizer(optax.adam(lr), clip_norm=clip, noise_multiplier=sigma,
                                    expected_batch_size=q * n, key=jax.random.key(seed + 1))
    if clipping == "ghost":
        value_and_grad = ghost.ghost_value_and_grad(module, clip)(objective)
    else:
        value_and_grad = dp_sgd.clipped_value_and_grad(clip)(objective)

    @jax.jit
    def train_step(params, opt_state, x, y, is_padding, key, step):  # as bench.train.train builds it
        (loss, aux), grads = value_and_grad(params, (x, y), key, step, is_padding)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    # as scenario=privacy builds it: one fixed shape on the per-example path, each batch's next multiple of 32
    # with ghost clipping (whose cost grows with the padding)
    sampler = dp_sgd.PoissonSampler(n, q, steps, steps_per_epoch, fixed_shape=clipping != "ghost")
    rng = np.random.default_rng(seed)
    opt_state, step, key = optimizer.init(params), 0, jax.random.key(seed + 2)
    epoch = 0
    while sampler.steps_taken < steps:
        times = []
        for idx in sampler(epoch, lambda e: rng):
            started = time.perf_counter()
            pad = idx < 0
            idx = np.where(pad, 0, idx)
            params, opt_state, loss, _ = train_step(params, opt_state, x_train[idx], y_train[idx], pad,
                                                    jax.random.fold_in(key, step), jnp.int32(step))
            jax.block_until_ready(params)
            times.append(time.perf_counter() - started)
            step += 1
        epoch += 1
        yield params, times, sampler.steps_taken


def theirs(net, x_train, y_train, *, batch_size, clip, sigma, lr, epochs, seed):
    """Opacus DP-SGD, one epoch per `next()`: yields (model, privacy engine, per-step seconds of that epoch)."""
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    dataset = torch.utils.data.TensorDataset(to_nchw(x_train), torch.from_numpy(y_train.astype(np.int64)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "secure RNG turned off" and similar notices
        engine = PrivacyEngine(accountant="rdp")
        net, optimizer, loader = engine.make_private(module=net, optimizer=optimizer, data_loader=loader,
                                                     noise_multiplier=sigma, max_grad_norm=clip,
                                                     poisson_sampling=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the first layer's input needs no grad
    net.train()
    for _ in range(epochs):
        times = []
        batches = iter(loader)
        while True:
            started = time.perf_counter()
            try:
                xb, yb = next(batches)
            except StopIteration:
                break
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        yield net, engine, times


def torch_accuracy(net, x, y) -> float:
    net.eval()
    with torch.no_grad():
        pred = net(to_nchw(x)).argmax(1).numpy()
    return float(np.mean(pred == y))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = bench_data.mnist5k()
    x_train, y_train = data.x_train, data.y_train.astype(np.int32)
    n = len(y_train)
    steps_per_epoch = -(-n // args.batch_size)  # Opacus: len(data_loader)
    q = 1.0 / steps_per_epoch
    steps = args.epochs * steps_per_epoch

    model = models.cnn_small(data.num_classes, data.mean, data.std)
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(args.seed), data.image_shape)
    net = torch_cnn_small(data.num_classes, data.mean, data.std)
    copy_flax_to_torch(params, net)
    with torch.no_grad():
        gap = np.abs(net.eval()(to_nchw(data.x_test[:200])).numpy()
                     - np.asarray(logits_fn(params, data.x_test[:200]))).max()
    if gap > 1e-3:
        raise SystemExit(f"the torch twin's logits differ from ours by {gap} before training")

    a = ours(params, logits_fn, standard(logits_fn), x_train, y_train, q=q, steps_per_epoch=steps_per_epoch,
             steps=steps, clip=args.clip, sigma=args.sigma, lr=args.lr, seed=args.seed)
    g = ours(params, logits_fn, standard(logits_fn), x_train, y_train, q=q, steps_per_epoch=steps_per_epoch,
             steps=steps, clip=args.clip, sigma=args.sigma, lr=args.lr, seed=args.seed, clipping="ghost",
             module=model)
    b = theirs(net, x_train, y_train, batch_size=args.batch_size, clip=args.clip, sigma=args.sigma, lr=args.lr,
               epochs=args.epochs, seed=args.seed)
    our_times, ghost_times, their_times = [], [], []
    load_before = os.getloadavg()
    for epoch in range(args.epochs):  # interleaved epoch by epoch
        params, t, our_steps = next(a)
        our_times += t
        ghost_params, t, _ = next(g)
        ghost_times += t
        net, engine, t = next(b)
        their_times += t
        print(f"epoch {epoch + 1}: ours {np.median(our_times[args.warmup:]) * 1e3:.1f} ms/step, ghost "
              f"{np.median(ghost_times[args.warmup:]) * 1e3:.1f} ms/step, "
              f"opacus {np.median(their_times[args.warmup:]) * 1e3:.1f} ms/step", flush=True)
    load_after = os.getloadavg()
    their_steps = sum(n_steps for _, _, n_steps in engine.accountant.history)
    their_q = engine.accountant.history[0][1]
    ours_ms = statistics.median(our_times[args.warmup:]) * 1e3
    ghost_ms = statistics.median(ghost_times[args.warmup:]) * 1e3
    theirs_ms = statistics.median(their_times[args.warmup:]) * 1e3

    event = accounting.dpsgd_event(q, args.sigma, our_steps)
    eps_ours = {kind: accounting.epsilon(event, args.delta, kind) for kind in ("rdp", "pld")}
    from opacus.accountants import PRVAccountant, RDPAccountant

    eps_theirs = {}
    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = cls()
        acc.history = list(engine.accountant.history)
        eps_theirs[name] = float(acc.get_epsilon(delta=args.delta))
    acc_ours = evaluate.accuracy(logits_fn, params, data.x_test, data.y_test)
    acc_ghost = evaluate.accuracy(logits_fn, ghost_params, data.x_test, data.y_test)
    acc_theirs = torch_accuracy(net, data.x_test, data.y_test)

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    command = shlex.join(["python", "scripts/peer_opacus.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# DP-SGD: ours (JAX) vs Opacus (PyTorch) on cnn_small, mnist5k",
        "",
        f"Made by `{command}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} with {os.cpu_count()} CPU cores (torch threads {args.threads}), load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (a shared machine; the two trainings are "
        f"interleaved epoch by epoch so load hits both alike). jax {jax.__version__}, jax-privacy "
        f"{version('jax-privacy')}, dp-accounting {version('dp-accounting')}; torch {torch.__version__}, "
        f"opacus {version('opacus')}.",
        "",
        f"Recipe for both: 4,000 training images, Poisson sampling q = 1/{steps_per_epoch} = {q:.4g} (expected "
        f"batch {q * n:g}), clip norm {args.clip}, noise multiplier {args.sigma}, Adam lr {args.lr}, "
        f"{args.epochs} epochs, the same initial weights; step time = median over steps after the first "
        f"{args.warmup} (data fetch, forward, per-example gradients, clipping, noise, update).",
        "",
        "Ours twice, interleaved with Opacus: jax-privacy's per-example clipping, and the ghost-norm path "
        "(bench/privacy/ghost.py) that `scenario=privacy` picks for cnn_small (`scenario.dp.clipping=auto`).",
        "",
        "| | ours, per-example (jax-privacy) | ours, ghost norms | Opacus (per-sample hooks) | per-example / Opacus "
        "| ghost / Opacus |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ms per step | {ours_ms:.1f} | {ghost_ms:.1f} | {theirs_ms:.1f} | {ours_ms / theirs_ms:.2f} "
        f"| {ghost_ms / theirs_ms:.2f} |",
        f"| steps taken | {our_steps} | {our_steps} | {their_steps} | | |",
        f"| sampling rate q | {q:.6g} | {q:.6g} | {their_q:.6g} | | |",
        f"| test accuracy (1,000 images) | {100 * acc_ours:.1f}% | {100 * acc_ghost:.1f}% | {100 * acc_theirs:.1f}% "
        "| | |",
        "",
        f"Epsilon at delta = {args.delta:g} for these steps (add-or-remove-one neighbours):",
        "",
        "| accountant | epsilon |",
        "|---|---:|",
        f"| ours: dp-accounting RDP | {eps_ours['rdp']:.4f} |",
        f"| ours: dp-accounting PLD | {eps_ours['pld']:.4f} |",
        f"| Opacus RDP | {eps_theirs['rdp']:.4f} |",
        f"| Opacus PRV | {eps_theirs['prv']:.4f} |",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
