"""The site's plots (PNG, matplotlib), drawn from entries only.

- robust accuracy against eps, one line per model (best-known, solid; the suite's worst case, dashed), per
  dataset and norm;
- clean against best-known robust accuracy with its Pareto front, per dataset and threat;
- privacy-utility: test accuracy against epsilon (log scale; non-private runs as a dotted line), per dataset;
- the sandwich certified <= best-known robust <= clean, one group of bars per model, per dataset and threat.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.publish.entries import slug


def _value(entry, cell):
    c = entry["cells"].get(cell)
    if not c or not isinstance(c.get("value"), float):
        return None
    return 100 * c["value"] if c.get("share") else c["value"]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def _plain(text) -> str:
    """Text matplotlib shows as written (a `$` would start mathtext)."""
    return str(text).replace("$", r"\$")


def _label(entry) -> str:
    text = entry["name"]
    return _plain(text if len(text) <= 40 else text[:37] + "...")


def draw_all(entries: list[dict], out: Path) -> dict[str, list[dict]]:
    """Draw every plot the entries support into `out`; returns {kind: [{"file", "dataset", "threat"/"norm"}]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    drawn: dict[str, list[dict]] = {"robust_vs_eps": [], "pareto": [], "privacy_utility": [], "sandwich": []}
    evasion = [e for e in entries if e["family"] == "evasion"]
    for dataset in sorted({e["dataset"] for e in evasion}):
        for norm in sorted({e.get("norm") for e in evasion if e["dataset"] == dataset and e.get("norm")}):
            members = [e for e in evasion if e["dataset"] == dataset and e.get("norm") == norm]
            fig, ax = plt.subplots(figsize=(6, 4))
            for i, experiment in enumerate(sorted({e["experiment"] for e in members})):
                line = sorted((e for e in members if e["experiment"] == experiment), key=lambda e: e["eps"])
                xs = [e["eps"] for e in line if _value(e, "best_known") is not None]
                ys = [_value(e, "best_known") for e in line if _value(e, "best_known") is not None]
                if not xs:
                    continue
                colour = f"C{i % 10}"
                clean = _value(line[0], "clean")
                ax.plot(([0.0] if clean is not None else []) + xs, ([clean] if clean is not None else []) + ys,
                        marker="o", color=colour, label=_label(line[0]))
                suite = [(e["eps"], _value(e, "robust")) for e in line if _value(e, "robust") is not None]
                if suite and [y for _, y in suite] != ys:
                    ax.plot([x for x, _ in suite], [y for _, y in suite], ls="--", color=colour, alpha=.6)
            ax.set(xlabel=f"{norm} epsilon", ylabel="robust accuracy (%)", ylim=(0, 100),
                   title=_plain(f"{dataset}: best-known robust accuracy against epsilon"))
            ax.legend(fontsize=7)
            name = f"robust-vs-eps-{slug(dataset)}-{slug(norm)}.png"
            _save(fig, out / name)
            drawn["robust_vs_eps"].append({"file": name, "dataset": dataset, "norm": norm})
        for threat in sorted({e["threat"] for e in evasion if e["dataset"] == dataset}):
            members = [e for e in evasion if e["dataset"] == dataset and e["threat"] == threat
                       and _value(e, "clean") is not None and _value(e, "best_known") is not None]
            if members:
                fig, ax = plt.subplots(figsize=(6, 4))
                points = sorted(((_value(e, "clean"), _value(e, "best_known"), e) for e in members),
                                key=lambda p: (-p[0], -p[1]))
                front, best = [], -math.inf
                for x, y, e in points:  # clean descending: on the front when more robust than every cleaner model
                    if y > best:
                        front.append((x, y))
                        best = y
                ax.scatter([p[0] for p in points], [p[1] for p in points], color="C0")
                for x, y, e in points:
                    ax.annotate(_label(e), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
                ax.plot([p[0] for p in front], [p[1] for p in front], color="C3", label="Pareto front")
                ax.set(xlabel="clean accuracy (%)", ylabel="best-known robust accuracy (%)",
                       title=_plain(f"{dataset}, {threat}: clean against robust"))
                ax.legend(fontsize=7)
                name = f"pareto-{slug(dataset)}-{slug(threat)}.png"
                _save(fig, out / name)
                drawn["pareto"].append({"file": name, "dataset": dataset, "threat": threat})
            certified = [e for e in members if _value(e, "certified") is not None]
            if certified:
                fig, ax = plt.subplots(figsize=(6, 4))
                width = 0.27
                for i, e in enumerate(certified):
                    for j, (cell, colour) in enumerate((("certified", "C2"), ("best_known", "C1"), ("clean", "C0"))):
                        ax.bar(i + (j - 1) * width, _value(e, cell), width, color=colour,
                               label=cell.replace("_", "-") if i == 0 else None)
                ax.set_xticks(range(len(certified)), [_label(e) for e in certified], rotation=20, fontsize=7,
                              ha="right")
                ax.set(ylabel="accuracy (%)", ylim=(0, 100), title=_plain(f"{dataset}, {threat}: certified <= robust <= clean"))
                ax.legend(fontsize=7)
                name = f"sandwich-{slug(dataset)}-{slug(threat)}.png"
                _save(fig, out / name)
                drawn["sandwich"].append({"file": name, "dataset": dataset, "threat": threat})
    privacy = [e for e in entries if e["family"] == "privacy" and _value(e, "accuracy") is not None]
    for dataset in sorted({e["dataset"] for e in privacy}):
        members = [e for e in privacy if e["dataset"] == dataset]
        fig, ax = plt.subplots(figsize=(6, 4))
        private = sorted(((e["cells"]["epsilon"]["value"], _value(e, "accuracy"), e) for e in members
                          if isinstance(e["cells"].get("epsilon", {}).get("value"), float)), key=lambda p: p[0])
        groups: dict[tuple, list] = {}
        for x, y, e in private:
            groups.setdefault((e["architecture"], e["defense"]), []).append((x, y))
        for i, ((arch, defense), points) in enumerate(sorted(groups.items())):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i % 10}",
                    label=_plain(f"{arch} {defense}"))
        for i, e in enumerate(e for e in members if "epsilon" not in e["cells"]
                              or not isinstance(e["cells"]["epsilon"].get("value"), float)):
            ax.axhline(_value(e, "accuracy"), ls=":", color="k", label=_plain(f"non-private {e['architecture']}")
                       if i == 0 else None)
        if private:
            ax.set_xscale("log")
        ax.set(xlabel="epsilon (PLD accountant)", ylabel="test accuracy (%)", ylim=(0, 100),
               title=_plain(f"{dataset}: privacy against utility"))
        ax.legend(fontsize=7)
        name = f"privacy-utility-{slug(dataset)}.png"
        _save(fig, out / name)
        drawn["privacy_utility"].append({"file": name, "dataset": dataset})
    return drawn


def for_board(board: dict, drawn: dict[str, list[dict]]) -> list[str]:
    """The plots that belong on a leaderboard's page."""
    dataset, threat, kind = board["dataset"], board["threat"], board["kind"]
    files = []
    if kind == "evasion":
        files += [p["file"] for p in drawn["robust_vs_eps"] if p["dataset"] == dataset
                  and p["norm"] == threat.split()[0]]
        files += [p["file"] for p in drawn["pareto"] if p["dataset"] == dataset and p["threat"] == threat]
    if kind in ("evasion", "certified"):
        files += [p["file"] for p in drawn["sandwich"] if p["dataset"] == dataset and p["threat"] == threat]
    if kind == "privacy":
        files += [p["file"] for p in drawn["privacy_utility"] if p["dataset"] == dataset]
    return files
