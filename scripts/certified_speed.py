"""Speed of certified training and of bound computation, measured on this machine.

    python scripts/certified_speed.py --label after           # writes results/certified_speed.md

Three tables:
1. Training step time (jitted value_and_grad + Adam update, as bench/train.py runs it) of
   standard, IBP and CROWN-IBP training on cnn_small at batch 100, mid-ramp (eps > 0, beta in (0, 1),
   so every bound term is live); each step function must compile exactly once over steps with
   different `step` values (checked, recorded).
2. Bound computation time per example of IBP, CROWN-IBP (CROWN with IBP intermediate bounds) and full
   CROWN on cnn_small and cnn_large (freshly initialised weights; timing does not depend on them),
   batch of `--bound-batch` examples, after compilation.

3. The mean step over each CROWN-IBP preset's whole schedule (warm-up, ramp, after the ramp), from
   the step times of table 1: bench/train.py runs the CROWN pass only where its weight is not 0.

Rows of other labels already in the output file are kept, so the file can hold a "before" and an
"after" measurement of the same code path (each row records the git revision it ran on).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
try:  # the installed (editable) package, or another checkout on PYTHONPATH to measure older code
    import bench  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from bench import data, models  # noqa: E402
from bench.certify import crown, ibp  # noqa: E402
from bench.defenses.certified import crown_ibp_training, ibp_training  # noqa: E402
from bench.defenses.standard import standard  # noqa: E402
from bench.errors import BenchError  # noqa: E402

STEP_HEADER = ["label", "code", "model", "objective", "batch", "ms / step (wall)", "ms / step (CPU)", "x standard (CPU)",
               "compile s", "compiles", "GFLOP / step", "x IBP (GFLOP)"]
# The step table before its FLOP columns; its rows are kept, with "-" in the new columns.
OLD_STEP_HEADER = STEP_HEADER[:10]
BOUND_HEADER = ["label", "code", "model", "bound", "batch", "ms / example (wall)", "ms / example (CPU)", "compile s"]


def git_rev() -> str:
    """The revision of the bench package actually imported (+dirty when its certify code has local edits)."""
    src = Path(data.__file__).resolve().parents[1]
    if not (src / ".git").exists():
        return f"code at {src}"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench/certify", "bench/defenses/certified.py"],
                               cwd=src, capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"not a git checkout ({src})"


MID = 500  # mid-ramp for the objectives below (warmup 0, ramp 1000)


def time_steps(objective, params, x, y, steps: int, mid: int = MID):
    """(wall s / step, CPU s / step, compile s, compiled versions, FLOPs / step) of a train_step like
    bench/train.py's; the FLOPs are XLA's cost analysis of the compiled step."""
    optimizer = optax.adam(1e-3)

    @jax.jit
    def train_step(params, opt_state, x, y, key, step):
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, (x, y), key, step)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    key = jax.random.key(0)
    started = time.perf_counter()
    out = train_step(params, opt_state, x[0], y[0], key, jnp.int32(mid))
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - started
    p, s = params, opt_state
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        b = (i + 1) % len(x)
        p, s, loss = train_step(p, s, x[b], y[b], key, jnp.int32(mid + i + 1))
    jax.block_until_ready((p, loss))
    per_step, per_step_cpu = (time.perf_counter() - started) / steps, (time.process_time() - cpu) / steps
    compiles = train_step._cache_size()
    cost = train_step.lower(params, opt_state, x[0], y[0], key, jnp.int32(mid)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return per_step, per_step_cpu, compile_s, compiles, float(cost["flops"])


def step_rows(label, rev, steps: int, batch: int):
    ds = data.mnist5k()
    model = models.cnn_small(ds.num_classes, ds.mean, ds.std)
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), ds.x_train.shape[1:])
    nb = 4
    x = jnp.asarray(ds.x_train[: nb * batch].reshape(nb, batch, *ds.x_train.shape[1:]))
    y = jnp.asarray(ds.y_train[: nb * batch].reshape(nb, batch))
    crown_ibp = crown_ibp_training(logits_fn, model=model, eps=0.2, warmup_steps=0, ramp_steps=1000)
    objectives = {  # name: (objective, the step it is timed at)
        "standard": (standard(logits_fn), MID),
        "IBP": (ibp_training(logits_fn, model=model, eps=0.2, warmup_steps=0, ramp_steps=1000), MID),
        "CROWN-IBP": (crown_ibp, MID),
        # the robust term bounded by one CROWN pass on the loss, not one per margin row (Xu et al. 2020)
        "CROWN-IBP, loss fusion": (crown_ibp_training(logits_fn, model=model, eps=0.2, warmup_steps=0, ramp_steps=1000,
                                                     loss_fusion=True), MID),
        # the phase after the ramp (beta 0), which bench/train.py runs without the CROWN pass
        "CROWN-IBP after the ramp": (crown_ibp.phases[-1][1], 1000 + MID),
    }
    rows, base, flops = [], None, {}
    for name, (objective, at) in objectives.items():
        per_step, per_step_cpu, compile_s, compiles, flops[name] = time_steps(objective, params, x, y, steps, at)
        base = base or per_step_cpu
        rows.append([label, rev, "cnn_small", name, str(batch), f"{per_step * 1e3:.1f}", f"{per_step_cpu * 1e3:.1f}",
                     f"{per_step_cpu / base:.1f}", f"{compile_s:.1f}", str(compiles), f"{flops[name] / 1e9:.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    return [row + [f"{flops[row[3]] / flops['IBP']:.1f}"] for row in rows]


SCHEDULE_HEADER = ["label", "preset", "steps", "warm-up steps", "CROWN steps", "after-ramp steps",
                   "mean ms / step (CPU)", "x IBP step (CPU)"]
PRESETS = ("crown_ibp_zhang2020_mnist_reduced", "crown_ibp_zhang2020_mnist")
# Training-set sizes of datasets that are not on this machine (TFDS' documented split sizes).
TFDS_TRAIN_SIZES = {"mnist": 60_000}


def preset_schedule(name: str) -> tuple[int, int, int]:
    """(total steps, warm-up steps, ramp steps) of a CROWN-IBP preset, from its composed config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[f"+experiment={name}"])
    if cfg.dataset._target_.endswith("mnist5k"):
        n = cfg.dataset.n_train or len(data.mnist5k().y_train)
        n -= int(cfg.get("validation") or 0)
    else:
        n = TFDS_TRAIN_SIZES[cfg.dataset.name]
    total = int(cfg.train.epochs) * -(-n // int(cfg.train.batch_size))
    return total, int(cfg.defense.warmup_steps), int(cfg.defense.ramp_steps)


def schedule_rows(label, step_table):
    """The mean step of each preset's whole schedule, from the step times just measured: warm-up and the steps
    after the ramp at the after-the-ramp (IBP-only) step's time, the ramp at the CROWN-IBP step's."""
    ms = {r[3]: float(r[6]) for r in step_table}
    rows = []
    for name in PRESETS:
        total, warmup, ramp = preset_schedule(name)
        crown = min(ramp, max(total - warmup, 0))
        cheap = total - crown
        for objective, suffix in (("CROWN-IBP", ""), ("CROWN-IBP, loss fusion", " (loss fusion)")):
            if objective not in ms:
                continue
            mean = (crown * ms[objective] + cheap * ms["CROWN-IBP after the ramp"]) / total
            rows.append([label, name + suffix, str(total), str(min(warmup, total)), str(crown),
                         str(cheap - min(warmup, total)), f"{mean:.1f}", f"{mean / ms['IBP']:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


def bound_rows(label, rev, batch: int, repeats: int, model_names):
    ds = data.mnist5k()
    x = jnp.asarray(ds.x_test[:batch])
    y = jnp.asarray(ds.y_test[:batch])
    certifiers = {
        "IBP": ibp(eps=0.1),
        "CROWN-IBP": crown(eps=0.1, intermediate="ibp"),
        "CROWN": crown(eps=0.1, intermediate="crown"),
    }
    rows = []
    for model_name in model_names:
        model = getattr(models, model_name)(ds.num_classes, ds.mean, ds.std)
        params = models.init_params(model, jax.random.key(0), ds.x_train.shape[1:])
        for name, certify in certifiers.items():
            try:
                started = time.perf_counter()
                jax.block_until_ready(certify(model, params, x, y))
                compile_s = time.perf_counter() - started
            except BenchError as err:
                print(f"{model_name} {name}: {err}", flush=True)
                rows.append([label, rev, model_name, name, str(batch), "over max_coefficients", "-", "-"])
                continue
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                jax.block_until_ready(certify(model, params, x, y))
            per_example = (time.perf_counter() - started) / repeats / batch
            per_example_cpu = (time.process_time() - cpu) / repeats / batch
            rows.append([label, rev, model_name, name, str(batch), f"{per_example * 1e3:.2f}",
                         f"{per_example_cpu * 1e3:.2f}", f"{compile_s:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


def table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def read_rows(path: Path, header) -> list[list[str]]:
    """Rows of the table with this header already in the file (so other labels survive a rerun)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    head = "| " + " | ".join(header) + " |"
    if head not in lines:
        return []
    rows = []
    for line in lines[lines.index(head) + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="names this measurement (rows of other labels are kept)")
    parser.add_argument("--code", help="describes the code measured (default: its git revision)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per objective")
    parser.add_argument("--batch", type=int, default=100, help="training batch size")
    parser.add_argument("--bound-batch", type=int, default=100, help="examples per bound computation")
    parser.add_argument("--repeats", type=int, default=3, help="timed bound computations per certifier")
    parser.add_argument("--models", nargs="+", default=["cnn_small", "cnn_large"], help="models for bound timing")
    parser.add_argument("--skip-steps", action="store_true", help="bound timing only")
    parser.add_argument("--skip-bounds", action="store_true", help="training step timing only")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "certified_speed.md")
    args = parser.parse_args(argv)
    rev = args.code or git_rev()
    old_steps = read_rows(args.out, STEP_HEADER) + [r + ["-", "-"] for r in read_rows(args.out, OLD_STEP_HEADER)]
    old_steps = [r for r in old_steps if r[0] != args.label or args.skip_steps]
    old_bounds = [r for r in read_rows(args.out, BOUND_HEADER) if r[0] != args.label or args.skip_bounds]
    new_steps = [] if args.skip_steps else step_rows(args.label, rev, args.steps, args.batch)
    old_schedule = [r for r in read_rows(args.out, SCHEDULE_HEADER) if r[0] != args.label or args.skip_steps]
    new_schedule = [] if args.skip_steps else schedule_rows(args.label, new_steps)
    new_bounds = [] if args.skip_bounds else bound_rows(args.label, rev, args.bound_batch, args.repeats, args.models)
    import os
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, jax {jax.__version__} " \
          f"on {jax.devices()[0].platform}"
    lines = [
        "# Certified training and bound computation speed",
        "",
        "Made by `scripts/certified_speed.py` (see its docstring); every number below was measured by it, on a",
        f"shared machine ({cpu}) while other jobs ran: wall times vary with the load, so CPU time (all threads",
        "of this process) is given too and is the fairer comparison. `code`: the git revision of the bench",
        "package measured (`+dirty`: with uncommitted edits to the certify code).",
        "",
        "## Training step (cnn_small, mnist5k, mid-ramp)",
        "",
        "`ms / step`: one jitted step (value_and_grad of the objective + Adam update); `compiles`: compiled",
        "versions of the step function after steps with different step numbers (must be 1); `GFLOP / step`:",
        "XLA's cost analysis of the compiled step, the work any implementation of that objective's bound has",
        "to do at this batch (CROWN-IBP's per-margin pass repeats a backward pass for each of the 9 margin",
        "rows, so its FLOPs, not only its time, are a multiple of IBP's). `-`: measured before that column.",
        "",
        *table(STEP_HEADER, old_steps + new_steps),
        "",
        "## A whole CROWN-IBP schedule",
        "",
        "The CROWN pass runs only during the ramp (bench/defenses/certified.py, `phases`): warm-up (kappa 1) and",
        "the steps after it (beta 0) are IBP steps. Mean step over each preset's schedule, from the step times",
        "above: the ramp at the CROWN-IBP step's CPU time, every other step at the after-the-ramp step's.",
        "",
        *table(SCHEDULE_HEADER, old_schedule + new_schedule),
        "",
        "## Bound computation (L-inf eps 0.1, freshly initialised weights)",
        "",
        "`CROWN-IBP`: CROWN's backward pass from the margin specification with IBP intermediate bounds;",
        "`CROWN`: CROWN intermediate bounds for every layer (one backward pass per hidden neuron).",
        "",
        *table(BOUND_HEADER, old_bounds + new_bounds),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
