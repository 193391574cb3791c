"""results/speed.md: the side-by-side speed ratios of the suite in one page, read from the reports that measured them.

`make bench` runs, one after another on the same machine, scripts/peer_pgd.py (PGD-40 vs torchattacks and foolbox),
scripts/peer_autoattack.py (the AutoAttack suite vs torchattacks' at the paper's 100 iterations),
scripts/dp_speed.py (DP-SGD steps vs a non-private step), scripts/certified_speed.py (CROWN-IBP vs IBP
training steps) and scripts/peer_opacus.py (DP-SGD vs Opacus), then this
script. It reads the numbers from those reports (it types none itself), and measures two things of its own:
this machine's float32 matmul rate (the peak a model layer can reach) and the FLOPs of one PGD gradient
evaluation of cnn_small (XLA's cost analysis of the compiled step), which turn PGD's measured gradient
evaluations per second into GFLOP/s achieved, as a share of that peak.

Usage: python scripts/speed_report.py [--results results] [--out results/speed.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row whose first cell starts with `first_cell`."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0].startswith(first_cell):
                rows.append(cells)
    return rows


def number(cell: str) -> float:
    return float(re.sub(r"[^0-9.eE+-]", "", cell.split()[0]))


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo): machines of one kind here have differed from day to day."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 n x n matmul on this machine (best of `repeats`)."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def pgd_flops_per_example() -> float:
    """FLOPs of one input-gradient evaluation of cnn_small on one MNIST image (XLA's cost analysis, batch 100)."""
    from bench import models

    model = models.cnn_small(10, (0.13,), (0.31,))
    logits_fn = models.make_logits_fn(model)
    params = models.init_params(model, jax.random.key(0), (28, 28, 1))
    x = jnp.zeros((100, 28, 28, 1))
    y = jnp.zeros((100,), jnp.int32)

    def loss(x):
        logits = logits_fn(params, x)
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(100), y])

    cost = jax.jit(jax.grad(loss)).lower(x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / 100


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "speed.md")
    args = parser.parse_args(argv)
    r = args.results
    read = lambda name: (r / name).read_text() if (r / name).is_file() else ""
    lines = ["# Speed: the suite against the PyTorch tools, side by side on one machine", "",
             f"Made by `python scripts/speed_report.py` (the last step of `make bench`) on "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
             f"git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}, "
             f"{os.cpu_count()} CPUs ({cpu_model()}), load average {os.getloadavg()[0]:.2f}. Each row names the report that measured it "
             "(its command, date and load are there); ratios > 1 mean ours is faster.", "",
             "| what | ours | reference | ratio | source |", "|---|---:|---:|---:|---|"]

    pgd = read("peer_pgd.md")
    ours_rows = [c for c in table_rows(pgd, "bench.attacks.pgd (conv") if "before" not in c[0]]
    before = table_rows(pgd, "bench.attacks.pgd (conv lax, before)")
    torch2 = table_rows(pgd, "torchattacks.PGD |") or [c for c in table_rows(pgd, "torchattacks.PGD") if "thread" not in c[0]]
    torch1 = [c for c in table_rows(pgd, "torchattacks.PGD") if "1 thread" in c[0]]
    best = min(ours_rows, key=lambda c: number(c[4])) if ours_rows else None
    if best and torch2:
        t2 = number(torch2[0][4])
        lines.append(f"| PGD-40, 1,000 mnist5k images, cnn_small (ours at batch {best[1]}) | {number(best[4]):.2f} s | "
                     f"{t2:.2f} s (torchattacks, 2 threads) | {t2 / number(best[4]):.2f} | results/peer_pgd.md |")
        if torch1:
            t1 = number(torch1[0][4])
            lines.append(f"| the same, torch limited to 1 thread | {number(best[4]):.2f} s | {t1:.2f} s | "
                         f"{t1 / number(best[4]):.2f} | results/peer_pgd.md |")
        fool = table_rows(pgd, "foolbox.attacks.LinfPGD")
        if fool:
            f = number(fool[0][4])
            lines.append(f"| the same vs foolbox's LinfPGD on our JAX model (batch {fool[0][1]}) | {number(best[4]):.2f} s | "
                         f"{f:.2f} s (foolbox, JAX) | {f / number(best[4]):.2f} | results/peer_pgd.md |")
        if before:
            b = number(before[0][4])
            lines.append(f"| the same, before: XLA's own convolution (conv=lax), batch {before[0][1]} | {b:.2f} s | "
                         f"{t2:.2f} s | {t2 / b:.2f} | results/peer_pgd.md |")

    aa = read("peer_autoattack.md")
    for c in table_rows(aa, "cnn_small"):
        ours_s, ref_s = number(c[8]), number(c[9])
        lines.append(f"| AutoAttack suite, {c[0]} at eps {c[1]}, {c[2]} images (robust: ours {c[4]}, ref {c[5].split()[0]}) "
                     f"| {ours_s:.1f} s | {ref_s:.1f} s (torchattacks, 100 iterations) | {ref_s / ours_s:.2f} | "
                     "results/peer_autoattack.md |")

    dp = read("dp_speed.md")
    base = {}  # the faster non-private step at each batch size (the model's default conv or conv=lax)
    for c in table_rows(dp, ""):
        if len(c) == 4 and c[1].startswith("non-private"):
            base[c[0]] = min(base.get(c[0], float("inf")), number(c[2]))
    for c in table_rows(dp, ""):
        if len(c) == 4 and c[1].startswith("dp") and c[0] in base:
            lines.append(f"| DP-SGD step, batch {c[0]}, {c[1]} (goal: at most 2x) | {number(c[2]):.1f} ms | "
                         f"{base[c[0]]:.1f} ms (the faster non-private step) | {base[c[0]] / number(c[2]):.2f} "
                         f"(= {number(c[2]) / base[c[0]]:.2f}x the non-private step) | results/dp_speed.md |")
    opacus = table_rows(read("peer_opacus.md"), "ms per step")
    if opacus:
        c = opacus[0]
        if len(c) >= 4:  # ours per-example, ours ghost norms, Opacus
            for name, ours_ms in (("per-example clipping", c[1]), ("ghost norms", c[2])):
                lines.append(f"| DP-SGD step, ours ({name}) vs Opacus (cnn_small, mnist5k; goal: ours/Opacus at most "
                             f"0.25) | {number(ours_ms):.1f} ms | {number(c[3]):.1f} ms (Opacus) | "
                             f"{number(c[3]) / number(ours_ms):.2f} (ours/Opacus {number(ours_ms) / number(c[3]):.2f}) "
                             "| results/peer_opacus.md |")
        else:  # a report from before the ghost-norm row
            lines.append(f"| DP-SGD step, ours vs Opacus (cnn_small, mnist5k) | {number(c[1]):.1f} ms | "
                         f"{number(c[2]):.1f} ms (Opacus) | {number(c[2]) / number(c[1]):.2f} | results/peer_opacus.md |")

    cert = read("certified_speed.md")
    label = next((c[0] for c in reversed(table_rows(cert, "")) if len(c) >= 10 and c[3] == "CROWN-IBP"), None)
    steps = {c[3]: c for c in table_rows(cert, label or "-") if len(c) >= 10 and c[0] == label}
    if "IBP" in steps and "CROWN-IBP" in steps:
        ibp_ms = number(steps["IBP"][6])
        for name, what in (("CROWN-IBP", "CROWN-IBP training step mid-ramp, one backward pass per margin row"),
                           ("CROWN-IBP, loss fusion", "CROWN-IBP training step mid-ramp, loss fusion (one pass per "
                                                      "example, Xu et al. 2020)")):
            if name not in steps:
                continue
            ms = number(steps[name][6])
            flops = steps[name][11] if len(steps[name]) >= 12 and steps[name][11] != "-" else None
            work = f"; {flops}x IBP's FLOPs" if flops else ""
            lines.append(f"| {what} (cnn_small, batch {steps['IBP'][4]}, CPU time; goal: at most 3x{work}) | "
                         f"{ms:.1f} ms | {ibp_ms:.1f} ms (IBP step) | {ibp_ms / ms:.2f} (= {ms / ibp_ms:.1f}x "
                         "the IBP step) | results/certified_speed.md |")
        for c in table_rows(cert, label):
            if len(c) == 8:
                preset, fused = c[1].removesuffix(" (loss fusion)"), c[1].endswith(" (loss fusion)")
                lines.append(f"| CROWN-IBP{', loss fusion,' if fused else ''} mean step over {preset}'s schedule "
                             f"({c[4]} of {c[2]} steps with CROWN) | "
                             f"{number(c[6]):.1f} ms | {ibp_ms:.1f} ms (IBP step) | {1 / number(c[7]):.2f} "
                             f"(= {c[7]}x) | results/certified_speed.md |")
    if best:
        peak = matmul_peak()
        flops = pgd_flops_per_example()
        evals = number(best[6])
        achieved = evals * flops / 1e9
        lines += ["", "## Arithmetic rate", "",
                  f"- This machine's float32 matmul (2048 x 2048, best of 5): **{peak:.0f} GFLOP/s**.",
                  f"- One PGD gradient evaluation of cnn_small costs {flops / 1e6:.2f} MFLOP per image (XLA's cost "
                  "analysis of the compiled gradient).",
                  f"- PGD-40 at batch {best[1]}: {evals:,.0f} gradient evaluations/s (results/peer_pgd.md) = "
                  f"**{achieved:.0f} GFLOP/s, {achieved / peak:.0%} of the matmul peak**."]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
