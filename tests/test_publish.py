"""Publishing: entries are what the records say, pages are what the entries say (escaped), the ranking follows its
rule, model cards carry model-index YAML, reproduce's verdicts follow theirs, a model brought from outside gets on the
leaderboard end to end, and the site works in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench import leaderboard, records, reproduce
from bench.errors import BenchError
from bench.publish import boards, cards, entries, site

ROOT = Path(__file__).resolve().parents[1]


# --- hand-made runs ---------------------------------------------------------------------------------------------

def write_run(run_dir: Path, rows: list[dict], *, config: dict, seed: int = 0, scenario: str = "evasion",
              model: str = "cnn_small", defense: str = "standard", dataset: str = "mnist5k") -> pd.DataFrame:
    context = dict(scenario=scenario, dataset=dataset, model=model, defense=defense,
                   **records.provenance({**config, "seed": seed}, seed=seed, data_fingerprint="fp" + dataset))
    frame = records.make_rows(rows, context)
    records.write_records(run_dir, frame)
    return frame


def evasion_rows(clean, robust, *, n=1000, eps=0.3, sanity=0.0, extra=()):
    rows = [records.row("clean", "accuracy", clean, n, seconds=1.0),
            records.row("pgd", "robust_accuracy", robust, n, norm="linf", eps=eps, seconds=2.0),
            records.row("worst_case", "robust_accuracy", robust, n, norm="linf", eps=eps),
            records.row("sanity", "zero_gradients", sanity, 200, reason="gradients vanish" if sanity else ""),
            records.row("train", "seconds", 30.0, 4000, seconds=30.0)]
    return rows + list(extra)


def make_runs(root: Path, *, hostile: str | None = None) -> Path:
    """Two seeds of a PGD-trained model, a further AutoAttack evaluation of seed 0's parameters (lower), a standard
    model, a certified one, a DP run and a poisoning run; `hostile` names the standard model."""
    runs = root / "runs"
    pgd = {"defense": {"_target_": "pgd_at"}, "paper": {"tolerance": 2.0}, "reduced_of": "madry_mnist"}
    write_run(runs / "pgd0", evasion_rows(0.979, 0.881), config=pgd, seed=0, defense="pgd_at")
    write_run(runs / "pgd1", evasion_rows(0.975, 0.885), config=pgd, seed=1, defense="pgd_at")
    aa = [records.row("clean", "accuracy", 0.979, 1000), records.row(
        "apgd_ce", "cumulative_robust_accuracy", 0.85, 1000, norm="linf", eps=0.3)] + [
        records.row(a, "robust_accuracy", 0.841, 1000, norm="linf", eps=0.3) for a in ("apgd_ce", "apgd_t", "square")
    ] + [records.row("worst_case", "robust_accuracy", 0.841, 1000, norm="linf", eps=0.3)]
    write_run(runs / "pgd0" / "autoattack", aa, config={**pgd, "load_params": str(runs / "pgd0" / "params.msgpack"),
                                                         "suite": "autoattack"}, seed=0, defense="pgd_at")
    write_run(runs / "std", evasion_rows(0.965, 0.001), config={"defense": "standard"}, model=hostile or "cnn_small")
    certified = evasion_rows(0.947, 0.874, eps=0.1, extra=[
        records.row("certified_any", "certified_accuracy", 0.80, 1000, norm="linf", eps=0.1),
        records.row("ibp", "certified_accuracy", 0.80, 1000, norm="linf", eps=0.1)])
    write_run(runs / "ibp", certified, config={"defense": "ibp"}, defense="ibp")
    dp = [records.row("utility", "test_accuracy", 0.714, 1000),
          records.row("accountant_pld", "epsilon", 3.0, 3500), records.row("accountant_rdp", "epsilon", 3.33, 3500),
          records.row("accountant_pld", "delta", 1e-5, 3500), records.row("loss_threshold", "auc", 0.518, 2000),
          records.row("canary_audit", "epsilon_lower_bound", 0.0, 500)]
    write_run(runs / "dp", dp, config={"scenario": "privacy"}, scenario="privacy", defense="standard+dp_sgd")
    poison = [records.row("poisoned", "clean_accuracy", 0.97, 1000, attack="badnets", poison_ratio=0.1),
              records.row("poisoned", "attack_success_rate", 0.99, 900, attack="badnets", poison_ratio=0.1),
              records.row("clean_training", "clean_accuracy", 0.975, 1000, attack="badnets", poison_ratio=0.0)]
    write_run(runs / "poison", poison, config={"scenario": "poisoning"}, scenario="poisoning")
    return runs


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Runs -> entries -> pages -> site, once for the module (the tests only read it)."""
    root = tmp_path_factory.mktemp("publish")
    runs = make_runs(root, hostile="<script>alert('$x')</script>")
    assert leaderboard.main([str(runs), "--out", str(root / "lb")]) == 0
    assert reproduce.main(["madry_mnist_reduced", "--reuse", str(runs / "pgd0"), "--out",
                           str(root / "lb" / "reproduce"), "--leaderboard", str(root / "none"), "--presets-table",
                           str(root / "none.md")]) == 0
    counts = site.build_site(root / "lb", root / "site")
    return root, runs, counts


def _entry(root, family="evasion", defense="pgd_at"):
    found = [e for e in entries.load_entries(root / "lb") if e["family"] == family and e["defense"] == defense]
    assert len(found) == 1, [e["id"] for e in found]
    return found[0]


# --- entries are what the records say -------------------------------------------------------------------------

def test_entries_equal_what_the_records_say(published):
    root, runs, _ = published
    frame = records.read_records(runs / "pgd0" / records.RECORDS_FILE, runs / "pgd1" / records.RECORDS_FILE)
    entry = _entry(root)
    robust = frame[(frame.evaluator == "worst_case")]
    assert entry["cells"]["robust"]["value"] == pytest.approx(robust.value.mean())
    assert entry["cells"]["robust"]["sd"] == pytest.approx(robust.value.std(ddof=1))
    assert entry["cells"]["robust"]["seeds"] == [0, 1] and entry["cells"]["robust"]["n"] == 1000
    prov = entry["cells"]["robust"]["provenance"]
    assert set(prov["run_ids"]) == set(robust.run_id) and set(prov["config_hashes"]) == set(robust.config_hash)
    assert prov["git_revs"] == sorted(set(robust.git_rev)) and prov["data_fingerprints"] == ["fpmnist5k"]
    low, high = records.wilson_interval(robust.value.mean(), 1000)
    assert entry["cells"]["robust"]["ci95"] == pytest.approx([float(low), float(high)])
    # the AutoAttack run evaluated seed 0's parameters (load_params): it joins this entry, and is the best known
    assert entry["cells"]["autoattack"]["value"] == pytest.approx(0.841)
    assert entry["cells"]["best_known"]["from"] == "eval:autoattack"
    assert entry["best_known_acc"] == pytest.approx(84.1) and entry["autoattack_acc"] == pytest.approx(84.1)
    assert entry["clean_acc"] == pytest.approx(100 * (0.979 + 0.975) / 2)
    flags = {f["flag"]: f["severity"] for f in entry["flags"]}
    assert flags == {"stronger attack beats the suite": "major"}  # 88.3 -> 84.1: more than 2 points
    assert entry["unreliable"] and entry["reliability"] == "unreliable"
    assert entry["paper"]["tolerance"] == 2.0
    # the full-scale paper's numbers (conf/experiment/madry_mnist.yaml), each held to its cell
    reported = {r["key"]: r for r in entry["reported"]}
    assert reported["clean"]["measured"] == entry["clean_acc"]
    assert reported["clean"]["difference"] == pytest.approx(entry["clean_acc"] - reported["clean"]["value"], abs=0.01)
    assert reported["autoattack"]["cell"] == "best_known" and reported["pgd100"]["cell"] == "robust"
    # no AutoAttack for the standard model: graded, not silent
    std = [e for e in entries.load_entries(root / "lb") if e["defense"] == "standard" and e["family"] == "evasion"][0]
    assert {f["flag"] for f in std["flags"]} == {"evaluation missing"} and std["reliability"] == "caution"


def test_tuning_runs_on_the_validation_split_make_no_entry(tmp_path):
    rows = evasion_rows(0.99, 0.95)
    for row in rows:
        row["split"] = "none" if row["evaluator"] == "train" else "validation"
    write_run(tmp_path / "tune", rows, config={"suite": {"split": "validation"}})
    write_run(tmp_path / "test", evasion_rows(0.97, 0.90), config={"suite": {"split": "test"}})
    built = entries.build_entries(entries.read_runs(tmp_path))
    assert len(built) == 1 and built[0]["cells"]["robust"]["value"] == pytest.approx(0.90)


def test_a_tampered_record_changes_the_page(tmp_path):
    runs = make_runs(tmp_path)
    path = runs / "ibp" / records.RECORDS_FILE
    lb, out = tmp_path / "lb", tmp_path / "site"
    assert leaderboard.main([str(runs), "--out", str(lb)]) == 0
    site.build_site(lb, out)
    board = next((out / "boards").glob("certified-*.html")).read_text()
    assert ">80.00<" in board
    frame = pd.read_parquet(path)
    frame.loc[frame.evaluator == "certified_any", "value"] = 0.612
    frame.to_parquet(path, index=False)
    assert leaderboard.main([str(runs), "--out", str(lb)]) == 0
    site.build_site(lb, out)
    board = next((out / "boards").glob("certified-*.html")).read_text()
    assert ">61.20<" in board and ">80.00<" not in board
    assert "61.20" in next((lb / "boards").glob("certified-*.md")).read_text()


def test_a_name_with_a_script_tag_renders_as_text(published):
    root, _, _ = published
    pages = list((root / "site").rglob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text()
        assert "<script>alert" not in text, page
        assert text.count("<script>") == 1  # the page's own inline script only
    board = next((root / "site" / "boards").glob("evasion-*.html")).read_text()
    assert "&lt;script&gt;alert(&#x27;$x&#x27;)&lt;/script&gt;" in board  # and a $ never starts mathtext in a plot
    md = next((root / "lb" / "boards").glob("evasion-*.md")).read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md


def test_the_site_is_self_contained_and_every_link_resolves(published):
    from html.parser import HTMLParser

    root, _, counts = published
    out = root / "site"

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs, self.ids, self.scripts = [], set(), []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if "id" in attrs:
                self.ids.add(attrs["id"])
            if tag == "script" or (tag == "link" and "stylesheet" in (attrs.get("rel") or "")):
                self.scripts.append(attrs)
            for key in ("href", "src"):
                if attrs.get(key):
                    self.refs.append((tag, attrs[key]))

    parsed = {}
    for page in out.rglob("*.html"):
        links = Links()
        links.feed(page.read_text())
        parsed[page.resolve()] = links
    assert len(parsed) == counts["pages"]
    followed = 0
    for page, links in parsed.items():
        assert links.scripts == [{}], page  # one inline script, no external script or stylesheet
        for tag, ref in links.refs:
            if ref.startswith(("http://", "https://")):
                assert tag == "a", (page, ref)  # a paper's link may point out; nothing the page loads does
                continue
            path, _, fragment = ref.partition("#")
            target = (page.parent / path).resolve()
            assert target.is_file(), (page, ref)
            if fragment:
                assert fragment in parsed[target].ids, (page, ref)
                followed += 1
    assert followed > counts["entries"]  # the provenance links: at least one number per entry
    verdicts = (out / "reproduce.html").read_text()
    assert "madry_mnist_reduced" in verdicts and "pgd100" in verdicts and "a class=\"prov\"" in verdicts


def test_boards_rank_by_the_written_rule(published):
    root, _, _ = published
    board = next(b for b in boards.build_boards(entries.load_entries(root / "lb"))
                 if b["kind"] == "evasion" and b["threat"] == "linf 0.3")
    assert [r["defense"] for r in board["rows"]] == ["pgd_at", "standard"]
    assert [r["rank"] for r in board["rows"]] == [1, 2]
    assert "best-known robust accuracy" in board["rule"]
    text = (root / "lb" / "boards" / f"{board['id']}.md").read_text()
    assert board["rule"] in text
    csv_rows = (root / "lb" / "boards" / f"{board['id']}.csv").read_text().splitlines()
    assert csv_rows[1].startswith("1,") and "84.10" in csv_rows[1]
    # ties share a rank; a row without the ranking number is last and unranked
    rows = [{"name": n, "values": {"m": v, "clean": 1.0}} for n, v in (("a", 5.0), ("b", 7.0), ("c", 5.0),
                                                                      ("d", None))]
    boards._rank(rows, "m", True, "clean")
    assert [(r["name"], r["rank"]) for r in rows] == [("b", 1), ("a", 2), ("c", 2), ("d", None)]
    poisoning = next(b for b in boards.build_boards(entries.load_entries(root / "lb")) if b["kind"] == "poisoning")
    assert poisoning["rank_by"] == "asr" and "lower first" in poisoning["rule"]


def test_model_cards_carry_model_index_yaml(published):
    root, _, _ = published
    entry = _entry(root)
    text = (root / "lb" / "cards" / f"{entry['model_id']}.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    model = front["model-index"][0]
    assert model["name"] == entry["model_id"]
    result = next(r for r in model["results"] if r["task"]["name"] == "evasion: linf 0.3")
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values["clean accuracy"] == pytest.approx(entry["clean_acc"])
    assert any(v == pytest.approx(84.1) for k, v in values.items() if "AutoAttack" in k)
    assert yaml.safe_load((root / "lb" / "cards" / f"{entry['model_id']}.yaml").read_text()) == front
    # the one row: one clean figure per trained model, the DP model has its own card
    row = {c["header"]: c for c in cards.card_row([entry])}
    assert [f["value"] for f in row["clean %"]["figures"]] == [pytest.approx(entry["clean_acc"])]
    dp_card = root / "lb" / "cards" / "mnist5k-cnn_small-standard-dp_sgd.md"
    assert "DP epsilon" in dp_card.read_text()


def test_pages_rebuild_from_the_entries_alone(published, tmp_path):
    root, _, _ = published
    copy = tmp_path / "lb"
    shutil.copytree(root / "lb" / "entries", copy / "entries")  # no records anywhere
    assert leaderboard.main(["--rebuild", "--out", str(copy)]) == 0
    for page in (root / "lb" / "boards").glob("*"):
        assert (copy / "boards" / page.name).read_text() == page.read_text()
    counts = site.build_site(copy, tmp_path / "site")
    assert counts["entries"] == len(list((copy / "entries").rglob("*.json")))


def test_bad_input_names_the_problem_and_the_fix(tmp_path, capsys):
    assert leaderboard.main([str(tmp_path / "missing"), "--out", str(tmp_path / "lb")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert leaderboard.main(["--out", str(tmp_path / "lb")]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert leaderboard.main(["--rebuild", "--out", str(tmp_path / "lb")]) == 2
    assert "python -m bench.leaderboard RUN_DIR" in capsys.readouterr().err
    bad = tmp_path / "lb" / "entries" / "x" / "y" / "z.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    assert leaderboard.main(["--rebuild", "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "rebuild it" in err
    with pytest.raises(BenchError, match="no preset 'nope'"):
        reproduce.resolve("nope", False)
    with pytest.raises(BenchError, match="names no full-scale preset"):
        reproduce.resolve("standard_mnist_reduced", True)
    assert reproduce.resolve("madry_mnist_reduced", True) == "madry_mnist"


# --- reproduce ------------------------------------------------------------------------------------------------

def test_verdicts_follow_the_rule():
    # 88.1% of 1000 against 88.4% of 1000: the difference is inside the sampling noise (about 2.8 points)
    verdict, d, noise = reproduce.verdict(88.1, 1000, 88.4, 1000, share=True, tolerance=1.0)
    assert verdict == "reproduced" and d == pytest.approx(-0.3)
    assert noise == pytest.approx(100 * 1.96 * math.sqrt(2 * 0.8825 * 0.1175 / 1000), rel=0.02)
    assert reproduce.verdict(84.0, 1000, 88.4, 1000, share=True, tolerance=5.0)[0] == "within tolerance"
    assert reproduce.verdict(84.0, 1000, 88.4, 1000, share=True, tolerance=2.0)[0] == "not reproduced"
    assert reproduce.verdict(84.0, 1000, 88.4, 1000, share=True, tolerance=None)[0] == "not reproduced"
    assert reproduce.verdict(3.0, 3500, 3.0, 3500, share=False, tolerance=None)[0] == "reproduced"
    assert reproduce.verdict(3.1, 3500, 3.0, 3500, share=False, tolerance=None)[0] == "not reproduced"
    # more examples, less noise: the same gap stops being noise
    assert reproduce.verdict(88.1, 100000, 89.1, 100000, share=True, tolerance=None)[0] == "not reproduced"


def test_reproduce_judges_a_finished_run_against_paper_and_reference(tmp_path, capsys):
    run = tmp_path / "run"
    config = {"reduced_of": "madry_mnist", "paper": {"tolerance": 4.0}}
    write_run(run, evasion_rows(0.980, 0.845), config=config, defense="pgd_at")
    table = tmp_path / "presets.md"
    table.write_text("## Measured (reduced scale)\n\n| preset | clean % | threat | robust % | AutoAttack % | n test |\n"
                     "|---|---|---|---|---|---|\n| madry_mnist_reduced | 97.90 | linf 0.3 | 88.10 | 84.10 | 1000 |\n\n"
                     "## Provenance\n\n| preset | run_id |\n|---|---|\n| madry_mnist_reduced | earlier-run |\n")
    out = tmp_path / "out"
    code = reproduce.main(["madry_mnist_reduced", "--reuse", str(run), "--out", str(out), "--presets-table",
                           str(table), "--leaderboard", str(tmp_path / "none")])
    assert code == 0
    data = json.loads((out / "madry_mnist_reduced.json").read_text())
    rows = {r["number"]: r for r in data["rows"]}
    assert rows["clean"]["reference"] == 97.9 and rows["clean"]["reference_verdict"] == "reproduced"
    # 84.5 against 88.1: 3.6 points, beyond the noise (about 3.0) but within the preset's 4-point tolerance
    assert rows["robust"]["reference_verdict"] == "within tolerance"
    assert rows["robust"]["reference_difference"] == pytest.approx(-3.6)
    assert 2.5 < rows["robust"]["noise"] < 3.5
    assert rows["clean"]["paper"] == pytest.approx(98.53)  # conf/experiment/madry_mnist.yaml's reported number
    assert "earlier-run" in rows["clean"]["reference_source"]
    assert "madry_mnist_reduced" in (out / "README.md").read_text()
    assert reproduce.main(["madry_mnist_reduced", "--reuse", str(run), "--out", str(out), "--presets-table",
                           str(table), "--strict", "--leaderboard", str(tmp_path / "none")]) == 0
    worse = tmp_path / "worse"
    write_run(worse, evasion_rows(0.980, 0.70), config=config, defense="pgd_at")
    assert reproduce.main(["madry_mnist_reduced", "--reuse", str(worse), "--out", str(out), "--presets-table",
                           str(table), "--strict", "--leaderboard", str(tmp_path / "none")]) == 1
    assert json.loads((out / "madry_mnist_reduced.json").read_text())["rows"][1]["reference_verdict"] == \
        "not reproduced"
    assert reproduce.main(["madry_mnist_reduced", "--reuse", str(tmp_path / "nothing")]) == 2
    assert "no records.parquet" in capsys.readouterr().err


# --- bring your own model -------------------------------------------------------------------------------------

def test_a_model_trained_elsewhere_gets_on_the_leaderboard(tmp_path, capsys):
    from bench import byom

    run = tmp_path / "runs" / "logreg"
    code = byom.main(["examples.byom_linear:build", "--name", "sklearn <b>logreg</b>", "--dataset", "digits",
                      "--suite", "pgd", "suite.eps=[0.1]", "suite.n_examples=48", "suite.sanity_examples=48",
                      "suite.batch_size=48", "suite.attacks.pgd.steps=10", "--arg", "max_iter=200", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    frame = pd.read_parquet(run / records.RECORDS_FILE)
    assert set(frame.model) == {"sklearn <b>logreg</b>"} and set(frame.defense) == {"external"}
    assert frame.config_hash.nunique() == 1 and frame.data_fingerprint.notna().all()
    assert json.loads(frame.config.iloc[0])["model"]["byom"]["function"] == "examples.byom_linear:build"
    assert (run / entries.MACHINE_FILE).is_file()
    assert leaderboard.main([str(tmp_path / "runs"), "--out", str(tmp_path / "lb")]) == 0
    entry = entries.load_entries(tmp_path / "lb")[0]
    clean = frame[(frame.evaluator == "clean") & (frame.metric == "accuracy")].value.iloc[0]
    assert entry["name"] == "sklearn <b>logreg</b> external" and entry["cells"]["clean"]["value"] == clean
    assert clean > 0.8  # a real classifier, evaluated on digits' test split
    assert entry["cells"]["robust"]["value"] <= clean
    assert entry["cells"]["clean"]["provenance"]["hardware"] != ["not recorded"]
    site.build_site(tmp_path / "lb", tmp_path / "site")
    page = (tmp_path / "site" / "entries" / f"{entry['id']}.html").read_text()
    assert "sklearn &lt;b&gt;logreg&lt;/b&gt;" in page and "<b>logreg" not in page
    # bad input: one line naming the problem
    assert byom.main(["examples.byom_linear:nope", "--name", "x", "--dataset", "digits", "--out",
                      str(tmp_path / "bad")]) == 2
    assert "has no 'nope'" in capsys.readouterr().err
    assert byom.main(["examples.byom_linear:build", "--name", "x", "--dataset", "digits", "--arg", "gamma=1",
                      "--out", str(tmp_path / "bad")]) == 2
    assert "takes no gamma" in capsys.readouterr().err


def test_a_flax_module_and_its_params_file_are_evaluated_as_saved(tmp_path):
    import jax

    from bench import byom, data, evaluate, models

    d = data.digits()
    module = models.mlp(d.num_classes, d.mean, d.std, hidden=(16,))
    params = models.init_params(module, jax.random.key(3), d.image_shape)
    models.save_params(tmp_path / "p.msgpack", params, (d.mean, d.std))
    run = tmp_path / "run"
    assert byom.main(["--flax", "bench.models:mlp", "--params", str(tmp_path / "p.msgpack"), "--arg", "hidden=[16]",
                      "--name", "mlp16", "--dataset", "digits", "suite.eps=[0.1]", "suite.n_examples=40",
                      "suite.attacks.pgd.steps=3", "suite.sanity=false", "--out", str(run)]) == 0
    frame = pd.read_parquet(run / records.RECORDS_FILE)
    clean = frame[(frame.evaluator == "clean") & (frame.metric == "accuracy")].value.iloc[0]
    assert clean == pytest.approx(evaluate.accuracy(models.make_logits_fn(module), params, d.x_test[:40],
                                                    d.y_test[:40]))
    assert json.loads(frame.config.iloc[0])["model"]["byom"]["flax"] == "bench.models:mlp"


# --- the committed results ------------------------------------------------------------------------------------

COMMITTED = ROOT / "results" / "leaderboard"


@pytest.mark.skipif(not (COMMITTED / "entries").is_dir(), reason="no committed entries yet")
def test_the_committed_pages_are_made_from_the_committed_entries(tmp_path):
    committed = entries.load_entries(COMMITTED)
    for entry in committed:
        for name, cell in entry["cells"].items():
            assert cell["provenance"]["run_ids"], (entry["id"], name)
    copy = tmp_path / "lb"
    shutil.copytree(COMMITTED / "entries", copy / "entries")
    if (COMMITTED / "reproduce").is_dir():
        shutil.copytree(COMMITTED / "reproduce", copy / "reproduce")
    assert leaderboard.main(["--rebuild", "--out", str(copy)]) == 0
    for sub in ("boards", "cards"):
        for page in (COMMITTED / sub).glob("*"):
            assert (copy / sub / page.name).read_text() == page.read_text(), f"{page} is stale: make leaderboard"
        assert sorted(p.name for p in (COMMITTED / sub).glob("*")) == sorted(p.name for p in (copy / sub).glob("*"))
    assert (copy / "README.md").read_text() == (COMMITTED / "README.md").read_text()
    if (ROOT / "results" / "site" / "index.html").is_file():  # the committed site is what `make site` makes
        site.build_site(copy, tmp_path / "site")
        made = {p.relative_to(tmp_path / "site") for p in (tmp_path / "site").rglob("*") if p.is_file()}
        kept = {p.relative_to(ROOT / "results" / "site") for p in (ROOT / "results" / "site").rglob("*")
                if p.is_file() and "screenshots" not in p.parts}
        assert made == kept
        for rel in made:
            if rel.suffix != ".png":
                assert (tmp_path / "site" / rel).read_text() == (ROOT / "results" / "site" / rel).read_text(), \
                    f"results/site/{rel} is stale: make site"


# --- a real browser -------------------------------------------------------------------------------------------

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000"]


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="no chromium / chromedriver installed (apt-get install chromium chromium-driver)")
def test_the_site_in_a_real_headless_browser(published, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root, _, counts = published
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in BROWSER_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((root / "site" / "index.html").as_uri())
        assert driver.title == "Leaderboards"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#boards tbody tr")) == counts["boards"]
        driver.get((root / "site" / "all.html").as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
        assert len(rows) == counts["entries"]
        names = [r.find_element(By.CSS_SELECTOR, "td").text for r in rows]
        assert "<script>alert('$x')</script> standard" in names  # shown as text, not run

        def column(index):
            return [r.find_elements(By.TAG_NAME, "td")[index].text for r in
                    driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr") if r.is_displayed()]

        header = driver.find_elements(By.CSS_SELECTOR, "#entries thead th")[6]  # clean %
        assert header.text == "clean %"
        header.click()
        values = [float(v) for v in column(6) if v]
        assert values == sorted(values, reverse=True) and len(values) >= 4
        header.click()
        values = [float(v) for v in column(6) if v]
        assert values == sorted(values)
        driver.find_elements(By.CSS_SELECTOR, "#entries thead th")[9].click()  # certified %: one entry has it
        assert column(9)[0] == "80.00" and set(column(9)[1:]) == {""}  # entries without the number sort last
        Select(driver.find_element(By.ID, "filter-threat")).select_by_value("linf 0.3")
        shown = column(3)
        assert shown and set(shown) == {"linf 0.3"} and len(shown) < counts["entries"]
        assert driver.find_element(By.ID, "shown").text == f"{len(shown)} of {counts['entries']} rows shown"
        link = driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr:not([hidden]) a.prov")[0]
        value = link.text
        link.click()
        assert "/entries/" in driver.current_url and "#cell-" in driver.current_url
        anchor = driver.current_url.split("#", 1)[1]
        target = driver.find_element(By.ID, anchor)
        assert value in target.text and "run" not in value
        run_ids = target.find_elements(By.TAG_NAME, "td")[7].text
        assert run_ids and "-0-" in run_ids  # the run that made it
        shot = tmp_path / "index.png"
        driver.get((root / "site" / "index.html").as_uri())
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        driver.quit()
