"""Publishing: leaderboard entries from records, leaderboards, model cards and a static site.

    records (results/runs, ignored)  ->  entries (JSON, results/leaderboard/entries, committed)
                                      ->  leaderboards (Markdown + CSV), model cards (Markdown + HF model-index YAML)
                                      ->  static site (results/site: HTML, inline JS, PNG plots; works from file://)

`bench/publish/entries.py` is the only place records are read; everything after it reads entries, so a clean
checkout rebuilds every page from the committed entries (`python -m bench.leaderboard --rebuild`, `make site`).
ARCHITECTURE.md, "Publishing", describes the entry format and the ranking rules.
"""
