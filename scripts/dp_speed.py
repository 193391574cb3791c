"""DP-SGD step time vs the non-private step, side by side in one process; writes results/dp_speed.md.

    python scripts/dp_speed.py                       # cnn_small, mnist5k-shaped batches of 64 and 256
    python scripts/dp_speed.py --batch-sizes 64 --reps 10 --out /tmp/dp_speed.md

Jitted training steps, each built as `bench.train.train` builds its step
(objective -> grad hook -> optax update), on the same model, data and batch:
- `non-private`: `jax.value_and_grad` of the standard objective, Adam;
- `non-private, conv=lax`: the same with XLA's own convolution, which is faster for a
                  plain step at some batch sizes; ratios are taken against the faster;
- `dp vmap`:      DP-SGD with jax-privacy's per-example clipping vmapped over the
                  whole batch (`microbatch_size=None`, this suite's DP path before
                  the speed fix), Gaussian noise, Adam;
- `dp loop`:      the same with `microbatch_size=1` (the default now);
- `dp ghost norms`: per-layer (ghost) clipping, bench/privacy/ghost.py.
Timing: median over `--reps` calls after warm-up, each call ended by
`block_until_ready`; the variants are timed round-robin so that machine load
hits them alike. Then `bench.train.train` runs a few Poisson-sampled DP epochs
and the script counts XLA compilations of its step (old padding: next multiple
of 32; new: one fixed shape) and reports the wall time per step end to end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import data as bench_data
from bench import models, train
from bench.defenses import standard
from bench.privacy import dp_sgd, ghost

ROOT = Path(__file__).resolve().parents[1]


class CompileCounter:
    """Counts XLA backend compilations of functions named `train_step` (jax.monitoring event) while active."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == self.EVENT and kwargs.get("fun_name") in ("train_step", "jit(train_step)"):
            self.count += 1


def make_step(value_and_grad, optimizer):
    """The jitted step of `bench.train.train` (same signature and body)."""

    @jax.jit
    def train_step(params, opt_state, x, y, is_padding, key, step):
        (loss, aux), grads = value_and_grad(params, (x, y), key, step, is_padding)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    return train_step


def step_times(variants: dict, params, x, y, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each variant's step, timed round-robin."""
    pad = jnp.zeros(len(y), bool)
    state = {}
    for name, (step, optimizer) in variants.items():
        p, s = params, optimizer.init(params)
        for i in range(warmup):
            p, s, loss, _ = step(p, s, x, y, pad, jax.random.key(i), jnp.int32(i))
            jax.block_until_ready(p)
        state[name] = (p, s)
    times = {name: [] for name in variants}
    for i in range(reps):
        for name, (step, _) in variants.items():
            p, s = state[name]
            started = time.perf_counter()
            p, s, loss, _ = step(p, s, x, y, pad, jax.random.key(100 + i), jnp.int32(i))
            jax.block_until_ready(p)
            times[name].append(time.perf_counter() - started)
            state[name] = (p, s)
    return {name: float(np.median(t)) for name, t in times.items()}


def end_to_end(objective, params, x, y, *, batch: int, epochs: int, counter: CompileCounter, **dp) -> dict:
    """bench.train.train with or without the DP hooks: compilations of its step and seconds per step."""
    n = len(y)
    if dp:
        q = batch / n
        steps = epochs * round(1 / q)
        sampler = dp_sgd.PoissonSampler(n, q, steps, round(1 / q), pad_multiple=32, overflow=dp["overflow"])
        optimizer = dp_sgd.dp_optimizer(optax.adam(1e-3), clip_norm=1.0, noise_multiplier=1.0,
                                        expected_batch_size=batch, key=jax.random.key(1))
        grad_fn = dp_sgd.clipped_value_and_grad(1.0, dp["microbatch_size"])
    else:
        sampler = grad_fn = None
        optimizer = optax.adam(1e-3)
    counter.count, counter.active = 0, True
    started = time.perf_counter()
    _, history = train.train(objective, params, optimizer, x, y, epochs=epochs, batch_size=batch,
                             key=jax.random.key(0), progress=False, grad_fn=grad_fn, sampler=sampler)
    seconds = time.perf_counter() - started
    counter.active = False
    steps = sampler.steps_taken if dp else epochs * train.steps_per_epoch(n, batch)
    return {"compiles": counter.count, "steps": steps, "seconds_per_step": seconds / steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the end-to-end runs (0 skips them)")
    parser.add_argument("--out", default=str(ROOT / "results" / "dp_speed.md"))
    args = parser.parse_args(argv)

    data = bench_data.mnist5k()
    model = models.cnn_small(data.num_classes, data.mean, data.std)
    logits_fn = models.make_logits_fn(model)
    objective = standard(logits_fn)
    params = models.init_params(model, jax.random.key(0), data.image_shape)
    plain = lambda p, batch, key, step, pad: jax.value_and_grad(objective, has_aux=True)(p, batch, key, step)
    objective_lax = standard(models.make_logits_fn(models.cnn_small(data.num_classes, data.mean, data.std,
                                                                    conv="lax")))
    plain_lax = lambda p, batch, key, step, pad: jax.value_and_grad(objective_lax, has_aux=True)(p, batch, key, step)
    load_before = os.getloadavg()

    rows = []
    for batch in args.batch_sizes:
        x, y = jnp.asarray(data.x_train[:batch]), jnp.asarray(data.y_train[:batch])
        variants = {}
        adam = optax.adam(1e-3)
        variants["non-private"] = (make_step(plain, adam), adam)
        # the model's other convolution: XLA's own kernel is the faster one for a plain training step at some
        # batch sizes, and the ratio is taken against the faster non-private step
        variants["non-private, conv=lax"] = (make_step(plain_lax, adam), adam)
        for name, mb in (("dp per-example, vmapped", None), ("dp per-example, loop", 1)):
            opt = dp_sgd.dp_optimizer(optax.adam(1e-3), clip_norm=1.0, noise_multiplier=1.0,
                                      expected_batch_size=batch, key=jax.random.key(1))
            variants[name] = (make_step(dp_sgd.clipped_value_and_grad(1.0, mb)(objective), opt), opt)
        opt = dp_sgd.dp_optimizer(optax.adam(1e-3), clip_norm=1.0, noise_multiplier=1.0,
                                  expected_batch_size=batch, key=jax.random.key(1))
        variants["dp ghost norms"] = (make_step(ghost.ghost_value_and_grad(model, 1.0)(objective), opt), opt)
        t = step_times(variants, params, x, y, args.reps)
        base = min(t["non-private"], t["non-private, conv=lax"])
        for name, seconds in t.items():
            rows.append((batch, name, seconds * 1e3, seconds / base))
            print(f"batch {batch:4d}  {name:18s} {seconds * 1e3:9.2f} ms  x{seconds / base:6.2f}", flush=True)

    e2e = []
    if args.epochs > 0:
        counter = CompileCounter()
        batch = max(args.batch_sizes)
        x, y = data.x_train, data.y_train
        for name, dp in (("non-private", {}),
                         ("dp before (vmap, pad to next multiple of 32)", {"microbatch_size": None, "overflow": 0.0}),
                         ("dp after (loop, one padded shape)", {"microbatch_size": 1, "overflow": 1e-6})):
            r = end_to_end(objective, params, x, y, batch=batch, epochs=args.epochs, counter=counter, **dp)
            e2e.append((name, r))
            print(f"train.train batch {batch}: {name}: {r}", flush=True)

    load_after = os.getloadavg()
    lines = [
        "# DP-SGD step time vs non-private (cnn_small, mnist5k)",
        "",
        f"Made by `{' '.join(['python scripts/dp_speed.py', *(sys.argv[1:] if argv is None else argv)])}` on {platform.machine()} with {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"({jax.default_backend()}), load average {load_before[0]:.1f} before / {load_after[0]:.1f} after "
        "(the machine is shared; ratios are measured side by side, round-robin, so load hits all variants alike).",
        "",
        f"Jitted training step (objective, gradient, Adam update; DP adds clipping and Gaussian noise), median of "
        f"{args.reps} calls after warm-up, `block_until_ready`; ratio = time / the faster non-private step (the model's default conv or XLA's, `conv=lax`) at the same batch size.",
        "",
        "| batch | step | ms | ratio |",
        "|---:|---|---:|---:|",
        *[f"| {b} | {name} | {ms:.2f} | {ratio:.2f} |" for b, name, ms, ratio in rows],
    ]
    if e2e:
        base = e2e[0][1]["seconds_per_step"]
        lines += [
            "",
            f"End to end: `bench.train.train` on the 4,000 mnist5k training images, {args.epochs} epochs at "
            f"(expected) batch {max(args.batch_sizes)}, DP with Poisson sampling; compilations of the training step "
            "counted with `jax.monitoring`; seconds per step include sampling, host-to-device copies and compilation.",
            "",
            "| run | steps | step compilations | ms per step | ratio |",
            "|---|---:|---:|---:|---:|",
            *[f"| {name} | {r['steps']} | {r['compiles']} | {r['seconds_per_step'] * 1e3:.1f} | "
              f"{r['seconds_per_step'] / base:.2f} |" for name, r in e2e],
        ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
