"""Model cards: one per model (dataset x architecture x defense), its one row across every threat family it was
evaluated under, and Hugging Face `model-index` YAML for it (front matter of the card, and a .yaml beside it).

Each figure of the row names the entry (and so the run) it comes from: the families train with their own
recipes, so two figures of one card can come from two trainings of the same architecture and defense.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.publish.boards import display

# (column header, family, cell, which threat goes into the header)
HEADLINES = [
    ("clean %", "evasion", "clean", False), ("robust % (suite)", "evasion", "robust", True),
    ("best-known %", "evasion", "best_known", True), ("certified %", "evasion", "certified", True),
    ("DP epsilon", "privacy", "epsilon", False), ("DP accuracy %", "privacy", "accuracy", False),
    ("MIA AUC (loss)", "privacy", "mia_loss_auc", False), ("MIA AUC (LiRA)", "privacy", "mia_lira_auc", False),
    ("audit epsilon LB", "privacy", "audit_lower_bound", False),
    ("copy agreement %", "theft", "copy_agreement_test", True),
    ("black-box transfer: oracle %", "blackbox", "transferred", True), ("backdoor ASR %", "poisoning", "asr", True),
    ("targeted poisoning %", "poisoning", "targeted_success", True),
    ("CA under poisoning %", "poisoning", "clean", True),
]


def card_row(entries: list[dict]) -> list[dict]:
    """The model's one row: per headline, the figures of its entries (each with its entry id and threat)."""
    row = []
    for header, family, cell, _ in HEADLINES:
        figures = [{"value": display(e["cells"][cell]), "threat": e["threat"], "entry": e["id"], "cell": cell,
                    "name": e["name"]}
                   for e in entries if e["family"] == family and cell in e["cells"]]
        if family == "evasion" and cell == "clean":  # one clean figure per trained model, not one per threat
            seen, unique = set(), []
            for f, e in zip(figures, [e for e in entries if e["family"] == family and cell in e["cells"]]):
                if e["experiment"] not in seen:
                    seen.add(e["experiment"])
                    unique.append(f)
            figures = unique
        if figures:
            row.append({"header": header, "family": family, "figures": figures})
    return row


def group_models(entries: list[dict]) -> dict[str, list[dict]]:
    models: dict[str, list[dict]] = {}
    for entry in entries:
        models.setdefault(entry["model_id"], []).append(entry)
    return dict(sorted(models.items()))


_METRIC_TYPE = {"clean": "accuracy", "robust": "robust_accuracy", "best_known": "robust_accuracy",
                "autoattack": "robust_accuracy", "certified": "certified_accuracy", "accuracy": "accuracy",
                "epsilon": "epsilon", "asr": "attack_success_rate", "copy_agreement_test": "agreement"}


def model_index(model_id: str, entries: list[dict]) -> dict:
    """Hugging Face model-index: one result per entry (task, dataset, metrics), each metric a number in %."""
    results = []
    for e in entries:
        metrics = []
        for name, cell in e["cells"].items():
            value = display(cell)
            if not isinstance(value, (int, float)) or name.startswith(("attack:", "certifier:", "eval:")):
                continue
            metrics.append({"type": _METRIC_TYPE.get(name, name.replace(":", "_")),
                            "name": cell.get("label", name), "value": value,
                            "verified": False})
        results.append({
            "task": {"type": "image-classification", "name": f"{e['family']}: {e['threat']}"},
            "dataset": {"type": e["dataset"], "name": e["dataset"], "split": "test"},
            "metrics": metrics,
            "source": {"name": f"bench entry {e['id']} (runs: "
                               + ", ".join(sorted({r for c in e["cells"].values()
                                                   for r in c["provenance"]["run_ids"]})) + ")",
                       "url": f"../entries/{e['id']}.html"},
        })
    return {"model-index": [{"name": model_id, "results": results}]}


def card_markdown(model_id: str, entries: list[dict]) -> str:
    from bench.publish.boards import _md_escape

    first = entries[0]
    front = yaml.safe_dump(model_index(model_id, entries), sort_keys=False, allow_unicode=False)
    row = card_row(entries)
    lines = ["---", front.rstrip(), "---", "", f"# {_md_escape(model_id)}", "",
             f"Architecture `{_md_escape(first['architecture'])}`, defense `{_md_escape(first['defense'])}`, "
             f"dataset `{_md_escape(first['dataset'])}`. Every figure below is from a leaderboard entry made from run "
             "records; the families train with their own recipes, so figures of different families can come from "
             "different trainings (each names its entry).", "", "## The one row", ""]
    if row:
        lines += ["| " + " | ".join(c["header"] for c in row) + " |", "|" + "|".join("---" for _ in row) + "|",
                  "| " + " | ".join("; ".join(f"{_fmt(f['value'])} ({_md_escape(f['threat'])})" for f in c["figures"])
                                    for c in row) + " |"]
    else:
        lines.append("(no headline figures)")
    lines += ["", "## Entries", "", "| entry | family | threat | reliability | flags |", "|---|---|---|---|---|"]
    for e in entries:
        flags = ", ".join(dict.fromkeys(f["flag"] for f in e.get("flags", [])))
        lines.append(f"| {_md_escape(e['name'])} (`{e['id']}`) | {e['family']} | {_md_escape(e['threat'])} | "
                     f"{e.get('reliability', '')} | {_md_escape(flags)} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_cards(entries: list[dict], out: Path) -> list[str]:
    from bench.records import atomic_write_bytes

    models = group_models(entries)
    for model_id, members in models.items():
        atomic_write_bytes(out / "cards" / f"{model_id}.md", card_markdown(model_id, members).encode())
        atomic_write_bytes(out / "cards" / f"{model_id}.yaml",
                           yaml.safe_dump(model_index(model_id, members), sort_keys=False).encode())
    return list(models)
