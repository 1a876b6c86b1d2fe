"""No traceback for any input a user can type: every command with a missing file, a file of the wrong kind, wrong
types in YAML / JSON and unknown keys ends in one ``error:`` line (or click's usage error) and exit code 2.

Runs in one process through ``typer.testing.CliRunner`` (an uncaught exception shows up as ``result.exception``);
every case fails before a model is loaded, so the walk is quick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visroute.cli import app

IMG = "{data}/imagenet-sample/n02123045_tabby.JPEG"


def _files(tmp: Path) -> dict[str, str]:
    """Bad inputs a user could hand to any command, written once per case."""
    (tmp / "dir").mkdir(exist_ok=True)
    files = {
        "missing": str(tmp / "missing.json"),
        "dir": str(tmp / "dir"),
        "binary": (tmp / "binary.json", b"\xff\xfe\x00garbage"),
        "notjson": (tmp / "notjson.json", b"{not json"),
        "list_json": (tmp / "list.json", b"[1, 2, 3]"),
        "num_json": (tmp / "num.json", b"42"),
        "dict_json": (tmp / "dict.json", b'{"a": {"b": 1}}'),
        "yaml_bad": (tmp / "bad.yaml", b"models: [unclosed\n"),
        "yaml_list": (tmp / "list.yaml", b"- 1\n- 2\n"),
        "grid_unknown": (tmp / "unknown.yaml", b"datasets: [x]\nmodels: [{name: a, head: zeroshot, model: random-tiny}]\n"
                                               b"modles: 1\n"),
        "grid_models_str": (tmp / "models_str.yaml", b"datasets: [x]\nmodels: clip\n"),
        "grid_dataset_int": (tmp / "ds_int.yaml", b"datasets: [3]\nmodels: [{name: a, head: zeroshot}]\n"),
        "grid_prices_num": (tmp / "prices_num.yaml", b"prices: 42\ndatasets: [x]\n"
                                                   b"models: [{name: a, head: zeroshot, model: random-tiny}]\n"),
        "grid_spec_unknown": (tmp / "spec_unknown.yaml", b"datasets: [x]\n"
                                                       b"models: [{name: a, head: zeroshot, modle: random-tiny}]\n"),
        "grid_limit_str": (tmp / "limit_str.yaml", b"limit: many\ndatasets: [x]\n"
                                                  b"models: [{name: a, head: zeroshot, model: random-tiny}]\n"),
        "serve_unknown": (tmp / "serve_unknown.yaml", b"modles: []\n"),
        "serve_wrong_type": (tmp / "serve_type.yaml", b"models: 5\n"),
        "parquet_bad": (tmp / "bad.parquet", b"not parquet at all"),
        "txt_empty": (tmp / "empty.txt", b""),
    }
    out = {}
    for k, v in files.items():
        if isinstance(v, tuple):
            v[0].write_bytes(v[1])
            v = str(v[0])
        out[k] = v
    return out


CASES = [
    # classify
    ("classify {img} --labels-file {missing}", None),
    ("classify {img} --labels-file {notjson}", None),
    ("classify {img} --labels-file {dict_json}", None),
    ("classify {img} --labels-file {num_json}", None),
    ("classify {img} --labels-file {txt_empty}", None),
    ("classify {img} --labels a,b --templates {list_json}", None),
    ("classify {img} --labels a,b --model no-such-model", None),
    ("classify {img} --labels a,b --top-k zero", None),
    # eval / report
    ("eval -m random-tiny -d {missing}", None),
    ("eval -m random-tiny -d {data}/cifar10-test --classnames {missing}", None),
    ("eval -m random-tiny -d {data}/cifar10-test --head cupl --descriptions {missing}", None),
    ("eval -m random-tiny -d {data}/cifar10-test --head cupl --descriptions {list_json}", None),
    ("eval -m random-tiny -d {data}/cifar10-test --head nope", None),
    ("eval -d {examples}/sqa-demo.jsonl --head vlm --vlm random-tiny:llava --prices {missing}", None),
    ("eval -d {examples}/sqa-demo.jsonl --head vlm --vlm random-tiny:llava --prices {list_json}", None),
    ("eval -d {examples}/sqa-demo.jsonl --head vlm --vlm random-tiny:llava --prices {notjson}", None),
    ("eval -d {examples}/sqa-demo.jsonl --head vlm --vlm random-tiny:llava --prompt {missing}", None),
    ("report {missing}", None),
    ("report {dir} --metric nope", None),
    # describe / explain
    ("describe --classes {missing} --llm random-tiny:llama --out {tmp}/d.json", None),
    ("describe --classes {dict_json} --llm random-tiny:llama --out {tmp}/d.json", None),
    ("describe --classes a.txt --llm no-such-backend:x --out {tmp}/d.json", None),
    ("describe --classes {examples}/classes.txt --llm random-tiny:llama --out {tmp}/d.json --style nope", None),
    ("explain {img} --descriptions {missing}", None),
    ("explain {img} --descriptions {num_json}", None),
    ("explain {img} --descriptions {binary}", None),
    # serve (configuration errors stop before the port opens)
    ("serve --config {missing}", None),
    ("serve --config {serve_unknown}", None),
    ("serve --config {serve_wrong_type}", None),
    ("serve --config {yaml_bad}", None),
    ("serve --api-keys-file {missing}", None),
    # reproduce
    ("reproduce no-such-recipe", None),
    ("reproduce seed000-router --scale huge", None),
    ("reproduce seed000-router --data-root {missing} --dry-run", 3),   # documented: prerequisites missing
    # grid
    ("grid run {missing}", None),
    ("grid run {dir}", None),
    ("grid run {binary}", None),
    ("grid run {yaml_bad}", None),
    ("grid run {yaml_list}", None),
    ("grid run {grid_unknown}", None),
    ("grid run {grid_models_str}", None),
    ("grid run {grid_dataset_int}", None),
    ("grid run {grid_prices_num}", None),
    ("grid run {grid_spec_unknown}", None),
    ("grid run {grid_limit_str}", None),
    # route
    ("route build {missing}", None),
    ("route build {parquet_bad}", None),
    ("route build {dir}", None),
    ("route train {missing}", None),
    ("route train {dir}", None),
    ("route eval {missing}", None),
    ("route eval {dir} --router {missing}", None),
    ("route import routellm {missing}", None),
    ("route import nosuch {dir}", None),
    ("route {img} --task t --options a,b --router {missing}", None),
    ("route {img} --task t --options a,b --router {dir}", None),
    ("route {missing} --task t --options a,b --router {dir}", None),
    # root
    ("no-such-command", None),
    ("eval --no-such-option", None),
]


@pytest.mark.parametrize("line,code", [(c[0], c[1] or 2) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(line, code, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VISROUTE_SERVE_API_KEYS", "")
    fmt = {**_files(tmp_path), "tmp": str(tmp_path), "data": str(shared_data),
           "examples": str(Path(__file__).resolve().parents[1] / "examples")}
    fmt["img"] = IMG.format(**fmt)
    args = [a.format(**fmt) for a in line.split()]
    r = CliRunner().invoke(app, args)
    text = r.output   # stdout and stderr, as a terminal shows them
    assert r.exception is None or isinstance(r.exception, SystemExit), \
        f"visroute {line}: uncaught {type(r.exception).__name__}: {r.exception}"
    assert "Traceback" not in text, text
    assert r.exit_code == code, f"visroute {line}: exit {r.exit_code}\n{text}"
    if code == 3:   # reproduce's list of missing prerequisites, each with how to get it
        return
    errors = [x for x in text.splitlines() if x.startswith(("error:", "Error:"))]
    assert len(errors) == 1, f"visroute {line}: expected one error line\n{text}"
    assert len(errors[0]) < 600


COMMANDS = ["", "classify", "models", "eval", "report", "describe", "explain", "serve", "reproduce", "grid run",
            "route build", "route import", "route train", "route eval", "route ask", "cache ls", "cache clear"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_readable_at_80_columns(command, monkeypatch):
    """No option name is cut (`--fallback-des…`): every line fits 80 columns and nothing is ellipsised."""
    monkeypatch.setenv("COLUMNS", "80")
    r = CliRunner().invoke(app, [*command.split(), "--help"], terminal_width=80)
    assert r.exit_code == 0, r.output
    assert "…" not in r.output, r.output
    assert max(map(len, r.output.splitlines())) <= 80, r.output
    assert "--output" not in r.output  # one vocabulary: --out (the old name is a hidden alias)


def test_output_is_a_hidden_alias_of_out(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--output", "x"])
    assert "No such option" in r.output   # report has no --out, so the alias is not an option of its own
    r = CliRunner().invoke(app, ["describe", "--classes", str(tmp_path / "none.txt"), "--llm", "random-tiny:llama",
                                 "--output", str(tmp_path / "d.json")])
    assert r.exit_code == 2 and "none.txt" in r.output and "No such option" not in r.output


def test_models_lists_every_builtin_spec():
    r = CliRunner().invoke(app, ["models", "--json"])
    specs = {row["spec"] for row in json.loads(r.output)}
    assert {"random-tiny:clip", "random-tiny:siglip", "random-tiny:llava", "random-tiny:llama"} <= specs


def test_reproduce_dry_run_suggests_installed_tools(tmp_path):
    """Every `get:` command it suggests starts with a program that is installed (`hf`, not `huggingface-cli`)."""
    import shutil
    import sys

    r = CliRunner().invoke(app, ["reproduce", "seed000-router", "--scale", "full", "--dry-run",
                                 "--data-root", str(tmp_path)])
    assert r.exit_code == 3, r.output
    assert "huggingface-cli" not in r.output and "hf download" in r.output
    hf = Path(sys.executable).parent / "hf"
    assert hf.exists() or shutil.which("hf"), "the suggested `hf` command is not installed"
