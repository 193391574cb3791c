"""Leaderboard entries, leaderboards and model cards from records.

    python -m bench.leaderboard RUN_DIR [RUN_DIR ...] --out results/leaderboard   # records -> entries -> pages
    python -m bench.leaderboard --rebuild --out results/leaderboard               # pages from the entries only
    python -m bench.leaderboard RUN_DIR --out DIR --replace                        # drop entries not rebuilt now

Writes DIR/entries/<dataset>/<threat>/<id>.json (one per model x dataset x threat, from records only),
DIR/boards/<board>.md and .csv (ranked, the rule on the page), DIR/cards/<model>.md (with Hugging Face
model-index YAML) and .yaml, and DIR/README.md (the index). Entries already in DIR that this call does not
rebuild are kept (a partial rerun never drops the others) unless --replace; an entry rebuilt now replaces the
one of the same id and any earlier entry of the same name, family and threat. The static site:
`python -m bench.publish.site DIR --out results/site` (`make site`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.publish import boards as boards_mod
from bench.publish import cards as cards_mod
from bench.publish import entries as entries_mod
from bench.records import atomic_write_bytes


def write_entries(entries: list[dict], out: Path, *, replace: bool = False) -> tuple[list[dict], int]:
    """Write the entries into out/entries; returns (all entries now there, how many earlier ones were kept)."""
    root = out / "entries"
    old = []
    if root.is_dir():
        for path in sorted(root.rglob("*.json")):
            if replace:
                path.unlink()
                continue
            try:
                old.append((path, entries_mod.load_entries_file(path)))
            except BenchError as err:
                raise BenchError(f"{err}; or pass --replace to rebuild every entry from the given runs") from None
    new_ids = {e["id"] for e in entries}
    new_names = {(e["name"], e["family"], e["dataset"], e["threat"]) for e in entries}
    kept = []
    for path, entry in old:
        if entry["id"] in new_ids or (entry["name"], entry["family"], entry["dataset"], entry["threat"]) in new_names:
            path.unlink()
        else:
            kept.append(entry)
    for entry in entries:
        atomic_write_bytes(out / entries_mod.entry_path(entry), entries_mod.dumps(entry).encode())
    for folder in sorted(root.rglob("*"), reverse=True):  # folders left empty by replaced entries
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    # the pages are made from the entries as written (sorted keys), so a rebuild from the files makes the same pages
    written = [json.loads(entries_mod.dumps(e)) for e in entries]
    return sorted(written + kept, key=lambda e: e["id"]), len(kept)


def write_pages(entries: list[dict], out: Path) -> tuple[list[dict], list[str]]:
    """Leaderboards and model cards (Markdown, CSV, YAML) from entries; stale pages are removed."""
    for sub in ("boards", "cards"):
        for path in (out / sub).glob("*") if (out / sub).is_dir() else []:
            if path.suffix in (".md", ".csv", ".yaml"):
                path.unlink()
    boards = boards_mod.build_boards(entries)
    cards = cards_mod.write_cards(entries, out)
    boards_mod.write_boards(boards, entries, cards, out)
    return boards, cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders (searched recursively) or records.parquet files")
    parser.add_argument("--out", default="results/leaderboard", help="the leaderboard folder (default: %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="read no records: pages from the entries in --out")
    parser.add_argument("--replace", action="store_true", help="drop every entry not rebuilt from these runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise BenchError(f"--out {out} is a file, not a folder; choose another path")
        if args.rebuild:
            if args.runs:
                raise BenchError("--rebuild reads no runs; drop the run folders or drop --rebuild")
            entries = entries_mod.load_entries(out)
            kept = 0
        else:
            if not args.runs:
                raise BenchError("name the run folders to build entries from (e.g. results/runs), or pass --rebuild "
                                 "to remake the pages from the entries already in --out")
            built = entries_mod.build_entries(entries_mod.read_runs(*args.runs))
            entries, kept = write_entries(built, out, replace=args.replace)
        boards, cards = write_pages(entries, out)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(entries)} entries ({kept} kept from earlier runs), {len(boards)} leaderboards, {len(cards)} model "
          f"cards in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
