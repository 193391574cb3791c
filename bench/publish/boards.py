"""Leaderboards from entries: one per (family, dataset, threat), ranked by the rule written on the page.

Evasion boards rank by best-known robust accuracy (the lowest robust accuracy any attack or evaluation of the
model found: the suite's per-example worst case, the transfer check, further evaluations such as AutoAttack),
higher first, ties broken by clean accuracy; certified accuracy has its own column and its own board
(ranked by certified accuracy). Privacy boards (one per epsilon) rank by test accuracy; poisoning boards by
attack success rate, lower first; theft boards by the copy's agreement with the victim, lower first; black-box
boards by the oracle's accuracy on transferred examples, higher first; boards of other families list their entries
unranked. Entries without the ranking number come last, unranked.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from bench.publish.entries import slug

# (column key, header, cell name); a cell's value is shown in % when it is a share
EVASION_COLUMNS = [("clean", "clean %", "clean"), ("robust", "robust % (suite)", "robust"),
                   ("transfer", "after transfer %", "transfer"), ("autoattack", "AutoAttack %", "autoattack"),
                   ("best_known", "best-known %", "best_known"), ("certified", "certified %", "certified")]
RULES = {
    "evasion": ("best_known", True, "Ranked by best-known robust accuracy (the lowest robust accuracy any attack or "
                "evaluation of the model found at this threat: the suite's per-example worst case, the transfer "
                "check, further evaluations such as AutoAttack), higher first; ties by clean accuracy. Certified "
                "accuracy is a separate column (a lower bound; the empirical ones are upper bounds)."),
    "certified": ("certified", True, "Ranked by certified accuracy (certified by at least one certifier), higher "
                  "first; ties by clean accuracy. Best-known empirical robust accuracy is shown next to it: certified "
                  "<= best-known <= clean must hold."),
    "privacy": ("accuracy", True, "Ranked by test accuracy at this privacy budget (epsilon from the PLD accountant, "
                "delta as recorded), higher first; ties by lower LiRA / loss-threshold AUC."),
    "poisoning": ("asr", False, "Ranked by attack success rate on triggered test inputs (or targeted success), "
                  "lower first; ties by higher clean accuracy."),
    "blackbox": ("transferred", True, "Ranked by the oracle's accuracy on adversarial examples crafted on a "
                 "substitute trained from its answers (Papernot et al.'s black-box attack), after the last round, "
                 "higher first; ties by clean accuracy."),
    "theft": ("copy_agreement_test", False, "Ranked by how often the stolen copy agrees with the victim on test "
              "inputs at the largest query budget, lower first (harder to steal); ties by higher victim accuracy."),
}
PRIVACY_COLUMNS = [("accuracy", "accuracy %", "accuracy"), ("epsilon", "epsilon (PLD)", "epsilon"),
                   ("epsilon_rdp", "epsilon (RDP)", "epsilon_rdp"),
                   ("audit_lower_bound", "audit epsilon LB", "audit_lower_bound"),
                   ("mia_loss_auc", "loss-threshold AUC", "mia_loss_auc"), ("mia_lira_auc", "LiRA AUC", "mia_lira_auc"),
                   ("mia_lira_tpr_0.1", "LiRA TPR@0.1% %", "mia_lira_tpr_0.1")]
POISONING_COLUMNS = [("clean", "CA %", "clean"), ("asr", "ASR %", "asr"), ("ra", "RA %", "ra"),
                     ("targeted_success", "targeted success %", "targeted_success"),
                     ("clean_training", "CA without poisons %", "clean_training")]
BLACKBOX_COLUMNS = [("clean", "oracle clean %", "clean"), ("transferred", "oracle on transferred %", "transferred"),
                    ("error_rate", "transfer error %", "error_rate"), ("substitute", "substitute %", "substitute"),
                    ("queries", "queries", "queries")]
THEFT_COLUMNS = [("clean", "victim accuracy %", "clean"), ("copy_accuracy", "copy accuracy %", "copy_accuracy"),
                 ("copy_agreement_test", "agreement (test) %", "copy_agreement_test"),
                 ("copy_agreement_uniform", "agreement (uniform) %", "copy_agreement_uniform"),
                 ("copy_total_variation", "total variation", "copy_total_variation")]


def display(cell: dict | None) -> float | str | None:
    """A cell's number as shown: % with 2 decimals for shares, 4 significant digits otherwise."""
    if not cell:
        return None
    value = cell.get("value")
    if isinstance(value, str):
        return value  # "inf"
    if value is None:
        return None
    return round(100 * value, 2) if cell.get("share") else float(f"{value:.4g}")


def _columns(family: str, entries: list[dict], board_kind: str) -> list[tuple[str, str, str]]:
    if board_kind == "certified":
        return [("clean", "clean %", "clean"), ("best_known", "best-known %", "best_known"),
                ("certified", "certified %", "certified")]
    if family == "evasion":
        return [c for c in EVASION_COLUMNS if any(c[2] in e["cells"] for e in entries)]
    fixed = {"privacy": PRIVACY_COLUMNS, "poisoning": POISONING_COLUMNS, "theft": THEFT_COLUMNS,
             "blackbox": BLACKBOX_COLUMNS}.get(family)
    if fixed is not None:
        shown = [c for c in fixed if any(c[2] in e["cells"] for e in entries)]
        extra = sorted({k for e in entries for k in e["cells"]} - {c[2] for c in fixed} - {"clean"})
        if family == "poisoning":  # the filters' numbers
            shown += [(k, k.replace(":", " ") + (" %" if any(e["cells"].get(k, {}).get("share") for e in entries)
                                                 else ""), k) for k in extra]
        return shown
    names = sorted({k for e in entries for k in e["cells"]})
    return [(k, k, k) for k in names]


def _board_keys(entry: dict) -> list[tuple[str, str]]:
    """(kind, threat) of the boards an entry is listed on."""
    keys = [(entry["family"], entry["threat"])]
    if entry["family"] == "evasion" and "certified" in entry["cells"]:
        keys.append(("certified", entry["threat"]))
    return keys


def _rank(rows: list[dict], metric: str | None, higher: bool, tie: str | None, tie_higher: bool = True) -> None:
    """Standard competition ranking (1, 2, 2, 4) on `metric`; rows without it come last, unranked."""
    def number(row, key):
        value = row["values"].get(key)
        return value if isinstance(value, (int, float)) and not math.isnan(value) else None

    if metric is None:
        rows.sort(key=lambda r: r["name"])
        for row in rows:
            row["rank"] = None
        return
    def key(row):
        v, t = number(row, metric), number(row, tie) if tie else None
        return (v is None, -(v or 0) if higher else (v or 0), -(t or 0) if tie_higher else (t or 0), row["name"])
    rows.sort(key=key)
    previous, rank = None, 0
    for i, row in enumerate(rows, 1):
        v = number(row, metric)
        if v is None:
            row["rank"] = None
            continue
        if v != previous:
            rank, previous = i, v
        row["rank"] = rank


def build_boards(entries: list[dict]) -> list[dict]:
    """Every leaderboard over the entries, sorted by id."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        for kind, threat in _board_keys(entry):
            groups.setdefault((kind, entry["dataset"], threat), []).append(entry)
    boards = []
    for (kind, dataset, threat), members in groups.items():
        family = members[0]["family"]
        columns = _columns(family, members, kind)
        metric, higher, rule = RULES.get(kind, (None, True, "Not ranked: this family has no single figure of merit "
                                                            "yet; entries are listed by name."))
        tie = {"privacy": "mia_loss_auc", "theft": "clean"}.get(kind, "clean")
        rows = []
        for e in members:
            values = {key: display(e["cells"].get(cell)) for key, _, cell in columns}
            rows.append({"entry": e["id"], "name": e["name"], "architecture": e["architecture"],
                         "defense": e["defense"], "dataset": e["dataset"], "threat": e["threat"],
                         "family": e["family"], "model_id": e["model_id"], "preset": e.get("preset"),
                         "reliability": e.get("reliability", ""), "flags": [f["flag"] for f in e.get("flags", [])],
                         "values": values, "cells": {key: cell for key, _, cell in columns if cell in e["cells"]},
                         "reported": [r for r in e.get("reported", []) if r.get("difference") is not None]})
        _rank(rows, metric if any(metric in r["values"] for r in rows) else None, higher, tie,
              tie_higher=kind != "privacy")
        board_id = slug(f"{kind}-{dataset}-{threat}")
        title = {"evasion": f"{dataset}: {threat} (empirical robustness)",
                 "certified": f"{dataset}: {threat} (certified robustness)",
                 "privacy": f"{dataset}: privacy at {threat}", "poisoning": f"{dataset}: {threat}",
                 "theft": f"{dataset}: {threat}"}.get(kind, f"{dataset}: {threat}")
        boards.append({"id": board_id, "kind": kind, "family": family, "dataset": dataset, "threat": threat,
                       "title": title, "rule": rule, "rank_by": metric, "columns": columns, "rows": rows})
    return sorted(boards, key=lambda b: (b["kind"] != "evasion", b["kind"], b["dataset"], b["threat"]))


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"
    return str(value)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def board_markdown(board: dict) -> str:
    headers = ["rank", "name", "architecture", "defense"] + [h for _, h, _ in board["columns"]] + \
              ["measured − reported", "reliability", "flags"]
    lines = [f"# {_md_escape(board['title'])}", "", _md_escape(board["rule"]), "",
             "Made by `python -m bench.leaderboard` from the committed entries (results/leaderboard/entries), "
             "which are made from run records only. Values in %; each entry's JSON holds every number's seeds, n, "
             "95% interval and provenance. `measured − reported` compares with the paper's number; for a reduced "
             "preset that is the full-scale paper's (another dataset size and model), so a gap there is expected and "
             "is no verdict: `python -m bench.reproduce PRESET` gives the verdicts (reproduce/).", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in board["rows"]:
        reported = "; ".join(f"{r['key']}: {r['difference']:+.2f}" for r in row["reported"])
        cells = [_text(row["rank"]) or "–", _md_escape(row["name"]), _md_escape(row["architecture"]),
                 _md_escape(row["defense"])] + [_text(row["values"].get(k)) for k, _, _ in board["columns"]] + \
                [_md_escape(reported), row["reliability"], _md_escape(", ".join(dict.fromkeys(row["flags"])))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def board_csv(board: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "name", "architecture", "defense", "entry"] + [k for k, _, _ in board["columns"]] +
                    ["reliability", "flags"])
    for row in board["rows"]:
        writer.writerow([row["rank"] if row["rank"] is not None else "", row["name"], row["architecture"],
                         row["defense"], row["entry"]] + [_text(row["values"].get(k)) for k, _, _ in board["columns"]]
                        + [row["reliability"], "; ".join(dict.fromkeys(row["flags"]))])
    return buffer.getvalue()


def index_markdown(boards: list[dict], entries: list[dict], cards: list[str]) -> str:
    lines = ["# Leaderboards", "", f"{len(entries)} entries, {len(boards)} leaderboards, {len(cards)} model cards, "
             "made by `python -m bench.leaderboard` from run records (entries/) only; the static site: "
             "`make site` (results/site/index.html).", "", "| leaderboard | entries | ranked by |", "|---|---|---|"]
    for board in boards:
        lines.append(f"| [{_md_escape(board['title'])}](boards/{board['id']}.md) | {len(board['rows'])} | "
                     f"{board['rank_by'] or 'not ranked'} |")
    lines += ["", "## Model cards", ""] + [f"- [{_md_escape(c)}](cards/{c}.md)" for c in cards]
    return "\n".join(lines) + "\n"


def write_boards(boards: list[dict], entries: list[dict], cards: list[str], out: Path) -> list[Path]:
    from bench.records import atomic_write_bytes

    written = []
    for board in boards:
        written.append(atomic_write_bytes(out / "boards" / f"{board['id']}.md", board_markdown(board).encode()))
        written.append(atomic_write_bytes(out / "boards" / f"{board['id']}.csv", board_csv(board).encode()))
    written.append(atomic_write_bytes(out / "README.md", index_markdown(boards, entries, cards).encode()))
    return written
