"""The static site: `python -m bench.publish.site LEADERBOARD_DIR --out results/site` (`make site`).

One self-contained folder built from the entries only (no records, no network): index.html (the leaderboards,
the model cards, the plots), all.html (every entry in one table), boards/<id>.html, cards/<model>.html and
entries/<id>.html (every number's provenance, with the entry's JSON beside it), plots/*.png. Tables sort on a
click on their header and filter by dataset, threat model, defense and architecture, with a few lines of inline
JavaScript (no CDN, no external file), so the site works offline and from file://. Every number in a table
links to its provenance; every string that comes from a config, a record or an entry is HTML-escaped.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import shutil
import sys
from pathlib import Path

from bench.errors import BenchError
from bench.publish import boards as boards_mod
from bench.publish import cards as cards_mod
from bench.publish.entries import dumps, load_entries, slug
from bench.records import atomic_write_bytes

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:80em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f0f0f0;cursor:pointer;user-select:none}th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.unreliable td{background:#fde8e8}tr.caution td{background:#fff8e0}.filters{margin:.6em 0}
.filters label{margin-right:1em}code,pre{background:#f6f6f6}pre{padding:.6em;overflow:auto}
img{max-width:48%;margin:.3em;border:1px solid #ddd}nav a{margin-right:1em}.rule{max-width:60em}
"""

SCRIPT = """
(function(){
function key(td){var v=td.getAttribute('data-sort');if(v===null)v=td.textContent.trim();
 if(v===''||v==='\\u2013')return null;var n=Number(v);return isNaN(n)?v.toLowerCase():n;}
function sortBy(table,i,th){var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
 var dir=th.getAttribute('data-dir')==='desc'?'asc':(th.getAttribute('data-dir')==='asc'?'desc':
 (th.classList.contains('numeric')?'desc':'asc'));
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('data-dir');});
 th.setAttribute('data-dir',dir);
 rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);if(x===null&&y===null)return 0;
  if(x===null)return 1;if(y===null)return -1;var c=x<y?-1:(x>y?1:0);return dir==='asc'?c:-c;});
 rows.forEach(function(r){body.appendChild(r);});}
function filter(table){var sel=document.querySelectorAll('[data-filter]'),shown=0,rows=table.tBodies[0].rows;
 for(var r=0;r<rows.length;r++){var ok=true;for(var s=0;s<sel.length;s++){var f=sel[s],want=f.value;
  if(!want)continue;var have=rows[r].getAttribute('data-'+f.getAttribute('data-filter'))||'';
  if(f.tagName==='INPUT'){if(rows[r].textContent.toLowerCase().indexOf(want.toLowerCase())<0)ok=false;}
  else if(have!==want)ok=false;}
  rows[r].hidden=!ok;if(ok)shown++;}
 var c=document.getElementById('shown');if(c)c.textContent=shown+' of '+rows.length+' rows shown';}
document.querySelectorAll('table.sortable').forEach(function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){
  th.addEventListener('click',function(){sortBy(t,i,th);});});
 document.querySelectorAll('[data-filter]').forEach(function(f){f.addEventListener('input',function(){filter(t);});
  f.addEventListener('change',function(){filter(t);});});
 filter(t);});
})();
"""


def e(text) -> str:
    """HTML-escape anything shown (quotes too, so it is safe in attributes)."""
    return html.escape("" if text is None else str(text), quote=True)


def page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\n"
            f"<nav><a href=\"{up}index.html\">leaderboards</a><a href=\"{up}all.html\">every entry</a></nav>\n"
            f"<h1>{e(title)}</h1>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return str(value)


def number_cell(value, entry_id: str, cell: str | None, depth: int) -> str:
    """A table cell with the number linked to its provenance (entries/<id>.html#cell-...)."""
    if value is None or cell is None:
        return "<td class=\"num\" data-sort=\"\"></td>"
    sort = value if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)) else ""
    href = f"{'../' * depth}entries/{e(entry_id)}.html#cell-{e(slug(cell))}"
    return f"<td class=\"num\" data-sort=\"{e(sort)}\"><a class=\"prov\" href=\"{href}\">{e(_fmt(value))}</a></td>"


def filters(rows: list[dict], keys: list[tuple[str, str]]) -> str:
    parts = ["<div class=\"filters\">"]
    for key, label in keys:
        values = sorted({str(r.get(key, "")) for r in rows})
        options = "".join(f"<option value=\"{e(v)}\">{e(v)}</option>" for v in values)
        parts.append(f"<label>{e(label)} <select data-filter=\"{e(key)}\" id=\"filter-{e(key)}\">"
                     f"<option value=\"\">all</option>{options}</select></label>")
    parts.append("<label>search <input data-filter=\"text\" id=\"filter-text\" type=\"search\"></label>"
                 "<span id=\"shown\"></span></div>")
    return "".join(parts)


def _row_attrs(row: dict) -> str:
    return " ".join(f"data-{k}=\"{e(row.get(k, ''))}\"" for k in ("dataset", "threat", "defense", "architecture",
                                                                  "family")) + \
        f" class=\"{e(row.get('reliability', ''))}\""


FILTERS = [("dataset", "dataset"), ("threat", "threat model"), ("defense", "defense"), ("architecture", "architecture")]


def board_page(board: dict, plots: list[str]) -> str:
    heads = ["rank", "name", "architecture", "defense"] + [h for _, h, _ in board["columns"]] + \
        ["measured − reported", "reliability", "flags"]
    numeric = {0} | set(range(4, 4 + len(board["columns"])))
    head = "".join(f"<th{' class=numeric' if i in numeric else ''}>{e(h)}</th>" for i, h in enumerate(heads))
    body = []
    for row in board["rows"]:
        cells = [f"<td class=\"num\" data-sort=\"{e(row['rank'] if row['rank'] is not None else '')}\">"
                 f"{e(row['rank'] if row['rank'] is not None else '–')}</td>",
                 f"<td><a href=\"../entries/{e(row['entry'])}.html\">{e(row['name'])}</a></td>",
                 f"<td>{e(row['architecture'])}</td>", f"<td>{e(row['defense'])}</td>"]
        cells += [number_cell(row["values"].get(k), row["entry"], row["cells"].get(k), 1) for k, _, _ in
                  board["columns"]]
        reported = "; ".join(f"{r['key']}: {r['difference']:+.2f}" for r in row["reported"])
        cells += [f"<td>{e(reported)}</td>", f"<td>{e(row['reliability'])}</td>",
                  f"<td>{e(', '.join(dict.fromkeys(row['flags'])))}</td>"]
        body.append(f"<tr {_row_attrs(row)}>{''.join(cells)}</tr>")
    images = "".join(f"<img src=\"../plots/{e(p)}\" alt=\"{e(p)}\">" for p in plots)
    text = (f"<p class=\"rule\">{e(board['rule'])}</p><p>Family <code>{e(board['family'])}</code>, dataset "
            f"<code>{e(board['dataset'])}</code>, threat <code>{e(board['threat'])}</code>. Each number links to its "
            f"provenance. Click a header to sort. <i>measured − reported</i> compares with the paper's number; for a "
            f"reduced preset that is the full-scale paper's (another dataset size and model), so a gap there is "
            f"expected and is no verdict (<code>python -m bench.reproduce</code> gives those).</p>"
            f"{filters(board['rows'], FILTERS[2:])}"
            f"<table class=\"sortable\" id=\"board\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table><p><a href=\"{e(board['id'])}.csv\">CSV</a></p>{images}")
    return page(board["title"], text, 1)


def _headline(entry: dict) -> tuple[str | None, str]:
    rule = boards_mod.RULES.get(entry["family"])
    return (rule[0], rule[0]) if rule else (None, "")


def all_page(entries: list[dict]) -> str:
    heads = ["name", "family", "dataset", "threat model", "architecture", "defense", "clean %",
             "ranking figure", "value", "certified %", "reliability"]
    rows = []
    for entry in entries:
        metric, _ = _headline(entry)
        row = {"dataset": entry["dataset"], "threat": entry["threat"], "defense": entry["defense"],
               "architecture": entry["architecture"], "family": entry["family"],
               "reliability": entry.get("reliability", "")}
        cells = [f"<td><a href=\"entries/{e(entry['id'])}.html\">{e(entry['name'])}</a></td>",
                 f"<td>{e(entry['family'])}</td>", f"<td>{e(entry['dataset'])}</td>", f"<td>{e(entry['threat'])}</td>",
                 f"<td>{e(entry['architecture'])}</td>", f"<td>{e(entry['defense'])}</td>",
                 number_cell(boards_mod.display(entry["cells"].get("clean")), entry["id"],
                             "clean" if "clean" in entry["cells"] else None, 0),
                 f"<td>{e(metric or '')}</td>",
                 number_cell(boards_mod.display(entry["cells"].get(metric)) if metric else None, entry["id"],
                             metric if metric in entry["cells"] else None, 0),
                 number_cell(boards_mod.display(entry["cells"].get("certified")), entry["id"],
                             "certified" if "certified" in entry["cells"] else None, 0),
                 f"<td>{e(entry.get('reliability', ''))}</td>"]
        rows.append((row, f"<tr {_row_attrs(row)}>{''.join(cells)}</tr>"))
    numeric = {6, 8, 9}
    head = "".join(f"<th{' class=numeric' if i in numeric else ''}>{e(h)}</th>" for i, h in enumerate(heads))
    text = (f"<p>{len(entries)} entries. Filter by dataset, threat model, defense and architecture; click a header to "
            f"sort; each number links to its provenance.</p>"
            f"{filters([r for r, _ in rows], FILTERS + [('family', 'family')])}"
            f"<table class=\"sortable\" id=\"entries\"><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(h for _, h in rows)}</tbody></table>")
    return page("Every entry", text, 0)


def entry_page(entry: dict) -> str:
    p = entry.get("paper") or {}
    facts = [("name", entry["name"]), ("family", entry["family"]), ("dataset", entry["dataset"]),
             ("threat", entry["threat"]), ("architecture", entry["architecture"]), ("defense", entry["defense"]),
             ("variant", entry.get("variant")), ("preset", entry.get("preset")), ("model card", entry["model_id"]),
             ("experiment hash", entry.get("experiment")), ("paper", p.get("title")), ("link", entry.get("link")),
             ("reliability", entry.get("reliability")), ("footnote", entry.get("footnote"))]
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts if v not in (None, ""))
    heads = ["cell", "what", "value", "sd over seeds", "seeds", "n", "95% interval", "run ids", "config hashes",
             "git revisions", "data fingerprints", "hardware", "seconds"]
    cells = []
    for name, cell in entry["cells"].items():
        prov = cell["provenance"]
        ci = cell.get("ci95")
        scale = 100 if cell.get("share") else 1
        ci_text = f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci and None not in ci else ""
        sd = cell.get("sd")
        cells.append(
            f"<tr id=\"cell-{e(slug(name))}\"><td><code>{e(name)}</code></td><td>{e(cell.get('label'))}</td>"
            f"<td class=\"num\">{e(_fmt(boards_mod.display(cell)))}{' %' if cell.get('share') else ''}</td>"
            f"<td class=\"num\">{e(_fmt(sd * scale) if isinstance(sd, float) else '')}</td>"
            f"<td>{e(', '.join(map(str, cell['seeds'])))}</td><td class=\"num\">{e(cell['n'])}</td>"
            f"<td>{e(ci_text)}</td><td>{'<br>'.join(e(r) for r in prov['run_ids'])}</td>"
            f"<td>{'<br>'.join(e(r) for r in prov['config_hashes'])}</td>"
            f"<td>{'<br>'.join(e(r) for r in prov['git_revs'])}</td>"
            f"<td>{'<br>'.join(e(r) for r in prov['data_fingerprints'])}</td>"
            f"<td>{'<br>'.join(e(r) for r in prov['hardware'])}</td>"
            f"<td class=\"num\">{e(_fmt(prov.get('seconds')))}</td></tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in heads)
    flags = "".join(f"<li><b>{e(f['flag'])}</b> ({e(f['severity'])}): {e(f['reason'])}</li>" for f in entry["flags"])
    sanity = "".join(f"<li>{e(f['check'])}: {e(f['reason'])} (run {e(f['run_id'])})</li>"
                     for f in entry.get("sanity_flags", []))
    reported = "".join(
        f"<tr><td>{e(r['key'])}</td><td class=\"num\">{e(r.get('accuracy', r.get('value')))}</td>"
        f"<td>{e(r.get('cell'))}</td><td class=\"num\">{e(_fmt(r.get('measured')))}</td>"
        f"<td class=\"num\">{e(_fmt(r.get('difference')))}</td><td>{e(r.get('source', ''))}</td></tr>"
        for r in entry.get("reported", []))
    text = (f"<table id=\"facts\">{rows}</table><h2>Numbers and their provenance</h2>"
            f"<table id=\"cells\"><thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>"
            f"<h2>Reliability flags</h2><ul>{flags or '<li>none</li>'}</ul>"
            + (f"<h2>Sanity checks that tripped</h2><ul>{sanity}</ul>" if sanity else "")
            + (f"<h2>Reported by the paper</h2><table><thead><tr><th>reported</th><th>value</th><th>compared with"
               f"</th><th>measured</th><th>measured − reported</th><th>source</th></tr></thead><tbody>{reported}"
               "</tbody></table>" if reported else "")
            + "<h2>Commands</h2><ul>" + "".join(f"<li><code>{e(c)}</code></li>" for c in sorted(
                {c for cell in entry["cells"].values() for c in cell["provenance"].get("commands", [])})) + "</ul>"
            + "<details><summary>The experiment's config (seed aside)</summary><pre>"
            + e(json.dumps(entry.get("config", {}), indent=1, sort_keys=True)) + "</pre></details>"
            + f"<p><a href=\"{e(entry['id'])}.json\">the entry's JSON</a> · "
              f"<a href=\"../cards/{e(entry['model_id'])}.html\">model card</a></p>")
    return page(f"{entry['name']} — {entry['threat']}", text, 1)


def card_page(model_id: str, entries: list[dict]) -> str:
    row = cards_mod.card_row(entries)
    head = "".join(f"<th>{e(c['header'])}</th>" for c in row)
    values = "".join("<td>" + "<br>".join(
        f"<a class=\"prov\" href=\"../entries/{e(f['entry'])}.html#cell-{e(slug(f['cell']))}\">{e(_fmt(f['value']))}"
        f"</a> ({e(f['threat'])})" for f in c["figures"]) + "</td>" for c in row)
    import yaml

    listing = "".join(f"<li><a href=\"../entries/{e(x['id'])}.html\">{e(x['name'])}</a>: {e(x['family'])}, "
                      f"{e(x['threat'])} ({e(x.get('reliability', ''))})</li>" for x in entries)
    text = (f"<p>Architecture <code>{e(entries[0]['architecture'])}</code>, defense <code>{e(entries[0]['defense'])}"
            f"</code>, dataset <code>{e(entries[0]['dataset'])}</code>. The one row across every threat family it "
            "was evaluated under; each figure links to the entry (and run) it comes from. The families train with "
            "their own recipes, so figures of different families can come from different trainings.</p>"
            f"<table id=\"card\"><thead><tr>{head}</tr></thead><tbody><tr>{values}</tr></tbody></table>"
            f"<h2>Entries</h2><ul>{listing}</ul><h2>Hugging Face model-index</h2>"
            f"<pre>{e(yaml.safe_dump(cards_mod.model_index(model_id, entries), sort_keys=False))}</pre>"
            f"<p><a href=\"{e(model_id)}.yaml\">model-index YAML</a></p>")
    return page(f"Model card: {model_id}", text, 1)


def reproduce_page(verdicts: list[dict], entry_ids: set[str]) -> str:
    """The verdicts of `python -m bench.reproduce` (its JSON files), each measured number linked to its entry."""
    heads = ["preset", "ran", "threat", "number", "measured", "n", "reference", "verdict (reference)",
             "paper number", "paper", "verdict (paper)", "tolerance", "overridden"]
    body = []
    for data in verdicts:
        for r in data["rows"]:
            row = {"dataset": "", "threat": r["threat"], "defense": "", "architecture": "", "family": r["family"],
                   "reliability": ""}
            linked = r["entry"] in entry_ids
            measured = number_cell(round(r["measured"], 2), r["entry"], r["number"], 0) if linked else \
                f"<td class=\"num\">{e(_fmt(r['measured']))}</td>"
            cells = [f"<td>{e(data['preset'])}</td>", f"<td>{e(data['ran'])}</td>", f"<td>{e(r['threat'])}</td>",
                     f"<td>{e(r['number'])}</td>", measured, f"<td class=\"num\">{e(r['n'])}</td>",
                     f"<td class=\"num\">{e(_fmt(r.get('reference')))}</td>",
                     f"<td>{e(r.get('reference_verdict', ''))}</td>", f"<td>{e(r.get('paper_key', ''))}</td>",
                     f"<td class=\"num\">{e(_fmt(r.get('paper')))}</td>", f"<td>{e(r.get('paper_verdict', ''))}</td>",
                     f"<td class=\"num\">{e(r.get('tolerance') if r.get('tolerance') is not None else '')}</td>",
                     f"<td>{'yes' if data.get('overrides') else ''}</td>"]
            body.append(f"<tr {_row_attrs(row)}>{''.join(cells)}</tr>")
    head = "".join(f"<th>{e(h)}</th>" for h in heads)
    text = ("<p>Made by <code>python -m bench.reproduce PRESET</code> (results/leaderboard/reproduce/*.json). "
            "<i>reproduced</i>: the difference is within the 95% sampling noise; <i>within tolerance</i>: within the "
            "preset's <code>paper.tolerance</code> (percentage points); else <i>not reproduced</i>. The reference is "
            "the preset's earlier measured number; paper numbers are full-scale, so a reduced run is held to them "
            "for the record only.</p>"
            f"<table class=\"sortable\" id=\"verdicts\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>")
    return page("Reproduce: verdicts", text, 0)


def _verdicts(leaderboard_dir: Path) -> list[dict]:
    folder = Path(leaderboard_dir) / "reproduce"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("rows"), list):
                found.append(data)
        except ValueError:
            raise BenchError(f"{path} is not valid JSON; rerun `python -m bench.reproduce` for that preset") from None
    return found


def index_page(boards: list[dict], models: dict, plots: dict[str, list[str]], n_entries: int,
               verdicts: bool = False) -> str:
    heads = ["leaderboard", "kind", "dataset", "threat model", "entries", "ranked by"]
    rows = []
    for b in boards:
        row = {"dataset": b["dataset"], "threat": b["threat"], "family": b["kind"], "defense": "",
               "architecture": ""}
        rows.append((row, f"<tr {_row_attrs(row)}><td><a href=\"boards/{e(b['id'])}.html\">{e(b['title'])}</a></td>"
                          f"<td>{e(b['kind'])}</td><td>{e(b['dataset'])}</td><td>{e(b['threat'])}</td>"
                          f"<td class=\"num\">{len(b['rows'])}</td><td>{e(b['rank_by'] or 'not ranked')}</td></tr>"))
    head = "".join(f"<th{' class=numeric' if i == 4 else ''}>{e(h)}</th>" for i, h in enumerate(heads))
    cards = "".join(f"<li><a href=\"cards/{e(m)}.html\">{e(m)}</a> ({len(v)} entries)</li>" for m, v in models.items())
    images = "".join(f"<figure><img src=\"plots/{e(p['file'])}\" alt=\"{e(p['file'])}\"><figcaption>"
                     f"{e(p['file'])}</figcaption></figure>" for kind in plots.values() for p in kind)
    text = (f"<p>{n_entries} entries, {len(boards)} leaderboards, {len(models)} model cards, "
            f"{sum(len(v) for v in plots.values())} plots, built by <code>make site</code> from the committed "
            "entries (results/leaderboard/entries), which are made from run records only. "
            "<a href=\"all.html\">Every entry in one table</a>."
            + (" <a href=\"reproduce.html\">Reproduce verdicts</a>." if verdicts else "") + "</p>"
            f"{filters([r for r, _ in rows], FILTERS[:2])}<table class=\"sortable\" id=\"boards\"><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(h for _, h in rows)}</tbody></table>"
            f"<h2>Model cards</h2><ul>{cards}</ul><h2>Plots</h2>{images}")
    return page("Leaderboards", text, 0)


def build_site(leaderboard_dir, out) -> dict:
    """Write the site; returns counts (entries, pages, plots)."""
    from bench.publish import plots as plots_mod

    entries = load_entries(leaderboard_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder; choose another path")
    for sub in ("boards", "cards", "entries", "plots"):  # a rebuild leaves no page of a removed entry behind
        shutil.rmtree(out / sub, ignore_errors=True)
    boards = boards_mod.build_boards(entries)
    models = cards_mod.group_models(entries)
    plots = plots_mod.draw_all(entries, out / "plots")
    pages = 0

    def write(path, text):
        nonlocal pages
        atomic_write_bytes(out / path, text.encode())
        pages += path.endswith(".html")

    for board in boards:
        related = plots_mod.for_board(board, plots)
        write(f"boards/{board['id']}.html", board_page(board, related))
        write(f"boards/{board['id']}.csv", boards_mod.board_csv(board))
    for entry in entries:
        write(f"entries/{entry['id']}.html", entry_page(entry))
        write(f"entries/{entry['id']}.json", dumps(entry))
    for model_id, members in models.items():
        write(f"cards/{model_id}.html", card_page(model_id, members))
        import yaml

        write(f"cards/{model_id}.yaml", yaml.safe_dump(cards_mod.model_index(model_id, members), sort_keys=False))
    write("all.html", all_page(entries))
    verdicts = _verdicts(leaderboard_dir)
    if verdicts:
        write("reproduce.html", reproduce_page(verdicts, {x["id"] for x in entries}))
    elif (out / "reproduce.html").exists():
        (out / "reproduce.html").unlink()
    write("index.html", index_page(boards, models, plots, len(entries), verdicts=bool(verdicts)))
    return {"entries": len(entries), "pages": pages, "plots": sum(len(v) for v in plots.values()),
            "boards": len(boards), "cards": len(models)}


BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--window-size=1280,1000")


def screenshots(site_dir, out, pages: list[str]) -> list[Path]:
    """PNG screenshots of site pages (relative paths) taken by headless chromium from file://, into `out`."""
    import subprocess
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise BenchError("no chromium to take screenshots with; install it (apt-get install chromium) or drop "
                         "--screenshots")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    taken = []
    for rel in pages:
        source = (Path(site_dir) / rel).resolve()
        if not source.is_file():
            raise BenchError(f"no page {source} to screenshot; build the site first")
        target = out / (slug(rel.removesuffix(".html")) + ".png")
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", f"--screenshot={target.resolve()}",
                            source.as_uri()], capture_output=True, timeout=120, check=False)
        if not target.is_file():
            raise BenchError(f"chromium wrote no screenshot of {rel}; run it by hand to see why")
        taken.append(target)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish.site", description=__doc__.splitlines()[0])
    parser.add_argument("leaderboard", nargs="?", default="results/leaderboard",
                        help="the folder holding entries/ (default: %(default)s)")
    parser.add_argument("--out", default="results/site", help="the site folder (default: %(default)s)")
    parser.add_argument("--screenshots", metavar="DIR", help="also save PNG screenshots of the index and the first "
                        "leaderboard page into DIR (headless chromium)")
    args = parser.parse_args(argv)
    try:
        counts = build_site(args.leaderboard, args.out)
        if args.screenshots:
            first = sorted(p.name for p in (Path(args.out) / "boards").glob("evasion-*.html"))[:1]
            shots = screenshots(args.out, args.screenshots, ["index.html", *(f"boards/{p}" for p in first)])
            print("screenshots: " + ", ".join(map(str, shots)))
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"site: {counts['entries']} entries, {counts['boards']} leaderboards, {counts['cards']} model cards, "
          f"{counts['pages']} pages, {counts['plots']} plots in {args.out} (open {args.out}/index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
