"""`visroute reproduce`: every shipped recipe runs end to end at --scale tiny (tables complete, every cell filled, the
published column equal to the recipe's figures), `--dry-run --scale full` lists what is missing offline and exits 3,
recipes are validated, and the loopback OpenAI-compatible server answers like one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visroute.cli import app
from visroute.reproduce.report import _cell
from visroute.reproduce import EXIT_MISSING, RecipeError, load_recipe, recipe_names

RECIPES = ["disclip-classname-free", "seed000-vlm-vs-llm", "seed000-router"]
ROOT = Path(__file__).resolve().parents[1]


def test_recipes_ship_and_list():
    assert sorted(recipe_names()) == sorted(RECIPES)
    res = CliRunner().invoke(app, ["reproduce", "list", "--json"])
    assert res.exit_code == 0, res.output
    listed = {r["name"]: r["arxiv"] for r in json.loads(res.output)}
    assert listed == {"disclip-classname-free": "2412.11917", "seed000-vlm-vs-llm": "2410.14690",
                      "seed000-router": "2410.14690"}


def test_disclip_figures_are_the_papers_tables():
    """Spot checks against Tables 1 and 3 of arXiv 2412.11917 (as printed in CompVis/DisCLIP's README)."""
    r = load_recipe("disclip-classname-free")
    fig = {f["method"]: f["published"] for f in r.figures}
    assert fig["cf-dclip-ours"]["ImageNet"] == 62.57 and fig["cf-con-ours"]["Flowers102"] == 67.07
    assert fig["clip"]["EuroSAT"] == 40.92 and fig["ours-con-20"]["EuroSAT"] == 58.57
    assert all(len(p) == 7 for p in fig.values())  # the seven datasets of the main tables


def _published_text(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _expected_published(recipe) -> dict:
    """(table, row, model, column) -> the figure the recipe gives, for every row that has one."""
    out = {}
    if recipe.kind == "descriptions":
        methods = recipe.extra["methods"]
        for f in recipe.figures:
            m = methods[f["method"]]
            for ds, v in f["published"].items():
                out[(m["table"], m["row"], f["model"], ds)] = v
        for u in recipe.unreproducible:
            for ds, v in u["published"].items():
                out[(u["table"], u["row"], u["model"], ds)] = v
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_end_to_end_at_tiny_scale(name, tmp_path, shared_data):
    out = tmp_path / name
    res = CliRunner().invoke(app, ["reproduce", name, "--scale", "tiny", "--out", str(out),
                                   "--data-root", str(shared_data)])
    assert res.exit_code == 0, res.output[-3000:]
    recipe = load_recipe(name)
    doc = json.loads((out / "comparison.json").read_text())
    rows = doc["rows"]
    table = (out / "table.md").read_text()
    assert doc["arxiv"] == recipe.arxiv and f"arXiv:{recipe.arxiv}" in table
    # the table says what was measured: the stand-in for each model, and how many items each dataset had
    assert "## What was measured" in table and "random-weight stand-in" in table
    assert "(stand-in: " in table or recipe.kind != "descriptions"    # rows name the paper's model and its stand-in
    assert "images / tasks evaluated" in table
    for why in {r["note"] for r in rows if r["status"] == "not reproducible"}:   # one line per reason
        assert table.count(_cell(why)) == 1, why
    assert "cf-dclip" not in table.split("## w_cls sweeps")[-1] or recipe.kind != "descriptions"
    for r in rows:  # every cell filled, nothing failed
        assert all(str(r[k]).strip() for k in ("table", "row", "model", "column", "measured", "published", "delta",
                                               "note")), r
        assert r["status"] != "failed", r
        assert r["measured"] in table or r["status"] != "measured"
    # the published column is the recipe's data, row by row
    expected = _expected_published(recipe)
    got = {(r["table"], r["row"], r["model"], r["column"]): r for r in rows}
    for key, v in expected.items():
        assert got[key]["published_value"] == v and got[key]["published"] == _published_text(v), key
    again = CliRunner().invoke(app, ["reproduce", name, "--out", str(out), "--data-root", str(shared_data)])
    assert again.exit_code == 2 and "already holds a finished run" in again.output
    if recipe.kind == "descriptions":
        n = len(recipe.extra["methods"]) * len(recipe.models) * len(recipe.datasets)
        measured = [r for r in rows if r["status"] in ("measured", "not run")]
        assert len(measured) == n
        # CuPL published prompts exist for ImageNet, DTD and Flowers only: the other datasets say so
        cupl = {r["column"]: r for r in rows if r["row"].startswith("CuPL")}
        assert cupl["CUB200"]["status"] == "not run" and cupl["DTD"]["status"] == "measured"
        # the w_cls sweep was run and reported
        assert "## w_cls sweeps" in table and "best w_cls" in table
        assert sum(r["status"] == "not reproducible" for r in rows) == 4 * 7
        run = json.loads((out / "run.json").read_text())
        assert set(run["generation"]) == set(recipe.datasets)   # descriptions were written by the served LLM
        assert run["local_server"].startswith("http://127.0.0.1:")
    else:
        _check_grid_run(recipe, out, rows)


def _check_grid_run(recipe, out: Path, rows: list[dict]) -> None:
    run = json.loads((out / "run.json").read_text())
    assert run["local_server"].startswith("http://127.0.0.1:")
    # the VLM and VLM+LLM cells called the loopback server over HTTP and every call was answered
    docs = [json.loads(p.read_text()) for p in (out / "grid" / "results").rglob("*.json")]
    served = [d for d in docs if "openai-compatible:http://127.0.0.1" in d["model"]]
    assert {d["visroute"]["head"] for d in served} >= {"vlm", "vlm+llm"}
    assert all(d["visroute"]["n_errors"] == 0 and d["visroute"]["n_tasks"] > 0 for d in served)
    for f in recipe.figures:
        mine = [r for r in rows if r["table"] == f["table"] and r["row"].startswith(f["row"])]
        assert mine, f
        if isinstance(f.get("published"), (int, float)):
            assert all(r["published_value"] == f["published"] for r in mine)
        elif "published" in f:
            assert all(r["published"] == f["published"] for r in mine)
        else:
            assert all(r["published"] == "unknown (not obtained)" for r in mine)
    types = {d["task_type"] for d in recipe.datasets.values()}
    if recipe.name == "seed000-vlm-vs-llm":
        acc = [r for r in rows if r["table"] == "Accuracy per task type"]
        assert {r["column"] for r in acc} == types and len(acc) == 3 * len(types)
        assert all(0.0 <= r["measured_value"] <= 1.0 for r in acc)
        assert {r["measured"] for r in rows if r["column"] == "finding"} <= {"holds", "does not hold"}
    if recipe.extra.get("router"):
        png = out / "accuracy_cost.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        report = json.loads((out / "router" / "report.json").read_text())
        assert set(report["single_models"]) == {p["name"] for p in recipe.extra["pipelines"]}
        counts = {r["column"]: r["measured_value"] for r in rows if r["table"] == "Scale of the routing data"}
        assert counts["models"] == 4 and counts["datasets"] == len(recipe.datasets) and counts["records"] > 100
        gone = [r for r in rows if r["status"] == "not reproducible"]
        assert gone and all(report["best_single"] in r["note"] for r in gone)


def test_dry_run_full_lists_everything_missing_offline(tmp_path, shared_data):
    """In a fresh process with an empty hub cache and no network: one list, exit code 3."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub"),
           "HF_HOME": str(tmp_path / "hf-home"), "VISROUTE_SHARED_DATA": str(shared_data)}
    exe = [sys.executable, "-m", "visroute.cli"]
    res = subprocess.run(exe + ["reproduce", "disclip-classname-free", "--dry-run", "--scale", "full"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == EXIT_MISSING == 3, res.stderr
    text = res.stdout
    assert "15 prerequisite(s) missing" in text
    for item in ("hf:openai/clip-vit-base-patch32", "hf:openai/clip-vit-large-patch14", "hf:Qwen/Qwen2.5-7B-Instruct",
                 "ImageNet (test)", "ImageNetV2 (test)", "CUB200 (test)", "EuroSAT (test)", "Places365 (test)",
                 "DTD (test)", "Flowers102 (test)", "hf download openai/clip-vit-base-patch32",
                 "HF_HUB_OFFLINE is set"):
        assert item in text, item
    assert "[descriptions]" not in text  # the published description files are all here
    res = subprocess.run(exe + ["reproduce", "seed000-router", "--dry-run", "--scale", "tiny"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "all 9 prerequisites are on this machine" in res.stdout, res.stdout + res.stderr


def test_full_run_offline_stops_with_the_same_list(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["reproduce", "seed000-vlm-vs-llm", "--scale", "full", "--out", str(tmp_path / "r"),
                                   "--data-root", str(shared_data)])
    assert res.exit_code == EXIT_MISSING
    assert "knowledge: hf:derek-thomas/ScienceQA#split=test" in res.output
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.parametrize("args, message", [
    (["reproduce", "disclip-classname-fre"], "did you mean 'disclip-classname-free'"),
    (["reproduce", "seed000-router", "--scale", "huge"], "unknown scale 'huge'"),
    (["reproduce", "seed000-router", "--engine", "spark"], "unknown engine 'spark'"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, shared_data):
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "o"), "--data-root", str(shared_data)])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_recipe_validation_names_the_problem(tmp_path):
    good = load_recipe("seed000-vlm-vs-llm").path.read_text()
    cases = {
        "typo.yaml": (good.replace("pipelines:", "pipelnes:"), "unknown key 'pipelnes' (did you mean 'pipelines'?)"),
        "ref.yaml": (good.replace("better: vlm+llm", "better: gpt4v"), "better 'gpt4v' is not a pipeline"),
        "measure.yaml": (good.replace("measure: claim", "measure: clam", 1), "measure 'clam'"),
    }
    for fname, (text, message) in cases.items():
        p = tmp_path / fname
        p.write_text(text)
        with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            load_recipe(p)
    d = load_recipe("disclip-classname-free").path.read_text()
    p = tmp_path / "d.yaml"
    p.write_text(d.replace("{method: clip, model: ViT-B/32", "{method: clipp, model: ViT-B/32"))
    with pytest.raises(RecipeError, match="method 'clipp'"):
        load_recipe(p)


def test_local_server_answers_like_an_openai_endpoint():
    import urllib.error
    import urllib.request

    from visroute.reproduce.server import LocalServer

    def post(url, body) -> tuple[int, dict]:
        req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with LocalServer({"random-tiny:llama": "random-tiny:llama"}, max_tokens=4) as url:
        status, doc = post(url, {"model": "random-tiny:llama", "max_tokens": 3,
                                 "messages": [{"role": "user", "content": "Name a fish."}]})
        assert status == 200 and doc["choices"][0]["message"]["role"] == "assistant"
        assert 0 < doc["usage"]["completion_tokens"] <= 3 and doc["usage"]["prompt_tokens"] > 0
        assert post(url, {"model": "gpt-4o", "messages": []})[0] == 404
        assert post(url, {"model": "random-tiny:llama", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})[0] == 400


def test_recipes_are_package_data():
    """Every file under reproduce/recipes is matched by pyproject's package-data, so an installed wheel has them."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["visroute"]
    base = ROOT / "src" / "visroute"
    files = [p.relative_to(base).as_posix() for p in (base / "reproduce" / "recipes").rglob("*") if p.is_file()]
    assert len(files) >= 4
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), files
