"""`visroute route import routerbench`: RouterBench's layout read from the shipped fixture, real per-call costs,
bad cells skipped and counted, pickles refused without being opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from visroute.cli import app

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "routerbench"


def test_import_keeps_every_outcome_and_its_recorded_cost(tmp_path):
    files = [FIXTURE / "arc_challenge.csv", FIXTURE / "mbpp.csv"]
    r = CliRunner().invoke(app, ["route", "import", "routerbench", *map(str, files), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 0, r.output
    assert "600 tasks x 11 models" in r.stdout
    rec = pq.read_table(tmp_path / "r.parquet").to_pandas()
    src = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    models = sorted(c[: -len("|total_cost")] for c in src.columns if c.endswith("|total_cost"))
    assert sorted(rec["model"].unique()) == models and set(rec["dataset"]) == {"arc-challenge", "mbpp"}
    usable = sum(int((src[m].notna() & src[m + "|total_cost"].notna()).sum()) for m in models)
    assert len(rec) == usable and f"skipped {len(src) * len(models) - usable} missing" in r.stdout
    row = src.iloc[7]
    for m in models[:3]:
        got = rec[(rec.task_id == row["sample_id"]) & (rec.model == m)]
        if np.isfinite(row[m]):
            assert got["cost"].item() == row[m + "|total_cost"] and got["correct"].item() == (row[m] >= 0.5)
    text = rec.loc[rec.task_id == row["sample_id"], "task_text"].iloc[0]
    assert not text.startswith("[") and not text.endswith("]") and text[:30] in row["prompt"]  # list literal unwrapped


def test_bad_files_are_one_line_errors(tmp_path):
    runner = CliRunner()
    pkl = tmp_path / "routerbench_0shot.pkl"
    pkl.write_bytes(b"\x80\x04 not opened")  # never unpickled: the suffix alone refuses it
    r = runner.invoke(app, ["route", "import", "routerbench", str(pkl), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 2 and "pickles run code" in r.output and "read_pickle" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["route", "import", "routerbench", str(bad), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 2 and "not RouterBench's layout" in r.output
    odd = tmp_path / "odd.csv"
    odd.write_text("sample_id,prompt,eval_name,m,m|total_cost\ns1,hello there,x,1.7,0.1\ns2,hi again,x,1,-3\n"
                   "s3,fine,x,0,0.2\n")
    r = runner.invoke(app, ["route", "import", "routerbench", str(odd), "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 0 and "skipped 2 missing or out-of-range" in r.stdout  # outcome 1.7, cost -3
    assert len(pq.read_table(tmp_path / "o.parquet")) == 1


def test_a_prompt_seen_again_adds_only_the_cells_it_lacked(tmp_path):
    """RouterDC's train and test files share some sample ids: the second row of the same prompt fills what the
    first lacked (never overwrites), and the same id on another prompt is skipped; both are counted."""
    from visroute.router.data.routerbench import read_routerbench

    head = "sample_id,prompt,eval_name,a,a|total_cost,b,b|total_cost\n"
    (tmp_path / "one.csv").write_text(head + "s1,same question,x,1,0.1,,\ns2,other,x,0,0.1,1,0.2\n")
    (tmp_path / "two.csv").write_text(head + "s1,same question,x,0,0.9,1,0.3\ns2,a different prompt,x,1,0.1,0,0.2\n")
    records, summary = read_routerbench([tmp_path / "one.csv", tmp_path / "two.csv"])
    got = {(t, m): (c, q) for t, m, c, q in zip(*(records.column(k).to_pylist() for k in
                                                  ("task_id", "model", "cost", "correct")))}
    assert got == {("s1", "a"): (0.1, True), ("s1", "b"): (0.3, True), ("s2", "a"): (0.1, False),
                   ("s2", "b"): (0.2, True)}
    assert summary["duplicate_prompts"] == 2 and summary["tasks"] == 2 and summary["skipped_cells"] == 1


def _fixture_script():
    """scripts/make_routerbench_fixture.py as a module (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_routerbench_fixture.py"
    spec = importlib.util.spec_from_file_location("make_routerbench_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_fixture_script_keeps_each_responses_answer_key(tmp_path):
    from visroute.router.data.routerbench import answer_key

    script = _fixture_script()
    code = "Here is a function:\\n\\n```python\\ndef f(x):\\n" + "    return x\\n" * 300 + "```"
    raw = {"list literal with a newline": "['C\\n']", "first line kept": "['The answer is (b).\\nBecause it is.']",
           "program": f"['{code}']", "plain string": "  B\nsince the wire is metal", "empty": "", "nan": float("nan"),
           "none": None, "pandas reads None as missing": "['None\\n']", "a literal inside": "[\"['A']\\nthen more\"]",
           "not a literal": "[not python]\nsecond", "several parts": "['', 'D', 'E']",
           "space at the cut": "['" + "x" * 199 + " " + "y" * 50 + "']", "quote": "[\"it's A\"]"}
    reduced = {k: script.reduce_response(v) for k, v in raw.items()}
    assert answer_key(raw["space at the cut"]).endswith("X ")  # the key keeps the 200th character, a space
    for k, v in raw.items():
        assert answer_key(reduced[k]) == answer_key(v), k
    assert reduced["empty"] is None and reduced["nan"] is None and reduced["list literal with a newline"] == "['C']"
    assert len(reduced["program"]) < 100 < len(raw["program"]) // 10  # programs are cut to their first line
    # the stored form survives a CSV round trip as the importer reads it ("None" alone would come back missing)
    ids = [f"s{i}" for i in range(len(raw))]
    frame = pd.DataFrame({"sample_id": ids, "m|model_response": [reduced[k] for k in raw]})
    frame.to_csv(tmp_path / "f.csv", index=False)
    back = pd.read_csv(tmp_path / "f.csv", low_memory=False)
    source = pd.DataFrame({"sample_id": ids, "m|model_response": list(raw.values())})
    script.check_keys(back, source)  # raises SystemExit on any difference
    assert [answer_key(v) for v in back["m|model_response"]] == [answer_key(v) for v in raw.values()]
    back.loc[0, "m|model_response"] = "['D']"
    with pytest.raises(SystemExit, match="changes the answer key"):
        script.check_keys(back, source)


def test_the_fixture_carries_answers_that_agree_for_a_reason():
    from visroute.router.data.routerbench import read_routerbench

    rec = read_routerbench([FIXTURE / "arc_challenge.csv", FIXTURE / "mbpp.csv"])[0].to_pandas()
    arc = rec[rec.dataset == "arc-challenge"]
    assert arc["answer"].notna().mean() > 0.95 and arc["answer"].isin(list("ABCD")).mean() > 0.9
    assert rec.loc[rec.dataset == "mbpp", "answer"].notna().mean() > 0.95
    # where two cheap models give the same letter, that letter is right more often than either model is overall
    wide = arc.pivot(index="task_id", columns="model", values=["answer", "correct"])
    a, b = "gpt-3.5-turbo-1106", "mistralai/mixtral-8x7b-chat"
    agree = (wide["answer", a] == wide["answer", b]).to_numpy()
    right = wide["correct", a].to_numpy(dtype=bool)
    assert 0.3 < agree.mean() < 0.95
    assert right[agree].mean() > max(right.mean(), wide["correct", b].to_numpy(dtype=bool).mean()) + 0.05


def test_route_train_cascade_on_the_fixture_weighs_agreement_sub_chains(tmp_path):
    from visroute.router.data.table import RoutingTable
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.decide.plan import cascade_points
    from visroute.router.decide.strategies import agreement_subchains, pareto_chain

    runner = CliRunner()
    files = [str(FIXTURE / "arc_challenge.csv"), str(FIXTURE / "mbpp.csv")]
    for argv in (["route", "import", "routerbench", *files, "--out", str(tmp_path / "r.parquet")],
                 ["route", "build", str(tmp_path / "r.parquet"), "--out", str(tmp_path / "table")],
                 ["route", "train", str(tmp_path / "table"), "--router", "logistic", "--strategy", "cascade",
                  "--out", str(tmp_path / "router")],
                 ["route", "eval", str(tmp_path / "table"), "--router", str(tmp_path / "router"), "--out",
                  str(tmp_path / "report")]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, f"{argv[:2]}: {r.output[-2000:]}"
    assert "cascade (calibrated)" in r.stdout
    table, bundle = RoutingTable.load(tmp_path / "table"), RouterBundle.load(tmp_path / "router")
    train, val = table.part("train"), table.part("val")
    assert (val.answer != "").mean() > 0.95  # the answer keys reach the routing table
    # the candidates training chose among, recomputed: the whole chain on the router's predictions and, because
    # the records carry answers, the sub-chains that stop when the answers agree
    proba = bundle.predict_proba(val.text, bundle.table_images(val))
    chain = pareto_chain(bundle.costs, np.nanmean(train.success, axis=0))
    points = cascade_points(chain, proba, val.success, val.cost, val.score, val.answer)
    subs = {tuple(sub) for sub, mode, *_ in points if mode == "agreement"}
    assert subs == {tuple(s) for s in agreement_subchains(chain)} and len(subs) >= 3
    assert {mode for _, mode, *_ in points} == {"router", "agreement"}
    without = cascade_points(chain, proba, val.success, val.cost, val.score, None)
    assert {mode for _, mode, *_ in without} == {"router"}
    # the bundle keeps the most accurate candidate on validation, whichever kind it is
    st, cal = bundle.strategy, bundle.meta["strategy_calibration"]
    assert st["kind"] == "cascade" and st["confidence"] in ("router", "agreement")
    assert any(sub == st["chain"] and mode == st["confidence"] and t == st["threshold"] for sub, mode, t, _ in points)
    best = max(float(out["success"].mean()) for *_, out in points)
    assert cal["realised_accuracy"] == pytest.approx(best)
