"""`visroute classify` and `visroute models` as a user runs them."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from visroute.cli import app

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path, imagenet_images):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for p in imagenet_images[:3]:
        shutil.copy(p, d / p.name)
    shutil.copy(imagenet_images[3], d / "sub" / imagenet_images[3].name)
    (d / "broken.jpg").write_bytes(imagenet_images[0].read_bytes()[:500])
    return d


def _json(result):
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_classify_json_reports_predictions_and_skips(folder, tiny_clip_dir):
    r = runner.invoke(app, ["classify", str(folder), "--labels", "cat, dog ,fish", "--model", f"hf:{tiny_clip_dir}",
                            "--top-k", "2", "--json", "--device", "cpu"])
    assert r.exit_code == 1, r.output  # something was skipped
    doc = _json(r)
    assert doc["n_classified"] == 4 and doc["n_skipped"] == 1
    assert doc["skipped"][0]["path"].endswith("broken.jpg") and doc["skipped"][0]["reason"]
    assert doc["labels"] == ["cat", "dog", "fish"] and doc["random_weights"] is False
    for p in doc["predictions"]:
        assert len(p["labels"]) == 2 and set(p["labels"]) <= {"cat", "dog", "fish"} and p["scores"][0] >= p["scores"][1]


def test_classify_matches_python_api(folder, tiny_clip_dir):
    from visroute import ZeroShotClassifier, load_model
    from visroute.batch_classify import classify_images

    (folder / "broken.jpg").unlink()
    r = runner.invoke(app, ["classify", str(folder), "--labels", "cat,dog,fish", "--model", f"hf:{tiny_clip_dir}", "--json"])
    assert r.exit_code == 0, r.output
    head = ZeroShotClassifier(load_model(f"hf:{tiny_clip_dir}", device="cpu")).fit(["cat", "dog", "fish"])
    run = classify_images(head, [folder], top_k=5, num_workers=0)
    cli = {p["path"]: p for p in _json(r)["predictions"]}
    assert len(cli) == len(run.predictions) == 4
    for p in run.predictions:
        assert cli[p.path]["labels"] == p.labels
        assert cli[p.path]["scores"] == pytest.approx(p.scores, abs=1e-6)


_CONSOLE_CLASSIFY = """
import sys
from visroute.cli import main
sys.argv = ["visroute", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("LOADED", sorted(m for m in ("sklearn", "torchvision") if m in sys.modules), file=sys.stderr)
"""


def test_console_classify_imports_neither_sklearn_nor_torchvision_and_scores_the_same(folder, tiny_clip_dir):
    """Start-up: the console command skips scikit-learn and torchvision, with the same bits as in-process."""
    import subprocess
    import sys

    (folder / "broken.jpg").unlink()
    args = ["classify", str(folder), "--labels", "cat,dog,fish", "--model", f"hf:{tiny_clip_dir}", "--json",
            "--device", "cpu"]
    r = subprocess.run([sys.executable, "-c", _CONSOLE_CLASSIFY, *args], capture_output=True, text=True, timeout=300)
    assert "LOADED []" in r.stderr, r.stderr
    here = runner.invoke(app, args)
    assert here.exit_code == 0, here.output
    console = json.loads(r.stdout[r.stdout.index("{"):])
    assert console["predictions"] == _json(here)["predictions"]  # identical labels and float scores


def test_random_tiny_smoke_run_is_labelled(folder):
    r = runner.invoke(app, ["classify", str(folder / "sub"), "--labels", "cat,dog", "--model", "random-tiny"])
    assert r.exit_code == 0, r.output
    assert "random weights" in r.stderr and "chance" in r.stderr
    assert r.stdout.count("\t") == 1


@pytest.mark.parametrize("args, message", [
    (["--labels", ""], "empty"),
    (["--labels", " , ,"], "empty"),
    (["--labels", "cat", "--templates", "missing.txt"], "does not exist"),
])
def test_bad_labels_are_usage_errors(args, message, folder, tiny_clip_dir):
    r = runner.invoke(app, ["classify", str(folder), "--model", f"hf:{tiny_clip_dir}", *args])
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.output


def test_duplicate_labels_are_merged_with_a_warning(folder, tiny_clip_dir):
    r = runner.invoke(app, ["classify", str(folder / "sub"), "--labels", "cat,dog,cat", "--model", f"hf:{tiny_clip_dir}", "--json"])
    assert r.exit_code == 0
    assert "repeated label(s) merged: cat" in r.stderr and _json(r)["labels"] == ["cat", "dog"]


def test_labels_from_csv_column(folder, tiny_clip_dir, shared_data):
    labels = shared_data / "imagenet-sample" / "labels.csv"
    r = runner.invoke(app, ["classify", str(folder / "sub"), "--labels-file", str(labels), "--model", f"hf:{tiny_clip_dir}", "--json"])
    assert r.exit_code == 0, r.output
    assert len(_json(r)["labels"]) == 998  # 1000 CLIP names, two of them repeated (missile, sunglasses)
    r = runner.invoke(app, ["classify", str(folder / "sub"), "--labels-file", f"{labels}:nope", "--model", f"hf:{tiny_clip_dir}"])
    assert r.exit_code == 2 and "no column 'nope'" in r.stderr


def test_labels_and_templates_from_clip_benchmark_files(folder, tiny_clip_dir, shared_data):
    cls = shared_data / "classnames" / "en_classnames.json"
    tpl = shared_data / "classnames" / "en_zeroshot_classification_templates.json"
    r = runner.invoke(app, ["classify", str(folder / "sub"), "--labels-file", f"{cls}:pets", "--templates", f"{tpl}:pets",
                            "--model", f"hf:{tiny_clip_dir}", "--json"])
    assert r.exit_code == 0, r.output
    doc = _json(r)
    assert len(doc["labels"]) == 37 and doc["templates"] == json.loads(tpl.read_text())["pets"]
    r = runner.invoke(app, ["classify", str(folder / "sub"), "--labels-file", str(cls), "--model", f"hf:{tiny_clip_dir}"])
    assert r.exit_code == 2 and "keyed by dataset" in r.stderr


def test_unreachable_model_is_one_line_not_a_traceback(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["classify", str(folder), "--labels", "a,b", "--model", "hf:visroute-test/nope"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "random-tiny" in r.stderr


def test_models_lists_known_specs():
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["clip-vit-b-32"]["spec"] == "hf:openai/clip-vit-base-patch32"
    assert rows["random-tiny"]["cached"] is True


def test_fast_decode_keeps_the_models_input_size(tmp_path):
    """decode 'fast' must not decode a 336-pixel model's images at 224 (transformers 5 uses a SizeDict)."""
    from transformers import CLIPImageProcessorPil

    from visroute.data.batches import choose_decoding
    from visroute.models.hf import HFImagePreprocess

    big = HFImagePreprocess(CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}))
    assert choose_decoding(big, "fast").draft_size == 336
    assert choose_decoding(big, "exact").draft_size is None
    small = HFImagePreprocess(CLIPImageProcessorPil(size={"shortest_edge": 224}))
    assert choose_decoding(small, "fast").draft_size == 224


# -- global options, fast start, structure ------------------------------------------------------------------

_NO_HEAVY_IMPORTS = """
import sys
from visroute.cli import main
sys.argv = ["visroute", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "transformers", "open_clip", "pyarrow", "pandas", "matplotlib") if m in sys.modules)
print("HEAVY", heavy, "EXIT", code, file=sys.stderr)
"""


@pytest.mark.parametrize("args, code, out", [
    (["--version"], 0, "visroute 0.1.0"),
    (["--help"], 0, "classify"),
    (["classify", "--help"], 0, "--labels"),
    (["eval", "--help"], 0, "--w-cls-sweep"),
    (["route", "eval", "--help"], 0, "--router"),
    (["classify"], 2, "Missing argument"),            # argument errors stay cheap too
    (["eval", "-d", "x", "--top-secret"], 2, "No such option"),
])
def test_help_version_and_argument_errors_import_no_heavy_library(args, code, out):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _NO_HEAVY_IMPORTS, *args], capture_output=True, text=True, timeout=120)
    assert f"HEAVY [] EXIT {code}" in r.stderr, r.stderr
    assert out in r.stdout + r.stderr


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    import visroute

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"visroute {visroute.__version__}" == f"visroute {version('visroute')}"


def test_import_visroute_is_lazy_but_exports_work():
    import subprocess
    import sys

    code = ("import sys, visroute; assert 'torch' not in sys.modules, 'import visroute loaded torch'; "
            "assert 'ZeroShotClassifier' in dir(visroute) and 'load_model' in visroute.__all__; "
            "from visroute import ZeroShotClassifier, load_model; from visroute.heads.zeroshot import ZeroShotClassifier as Z; "
            "assert ZeroShotClassifier is Z and callable(load_model)\n"
            "try:\n    visroute.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\nelse:\n    raise SystemExit(1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_python_m_visroute_cli_is_the_console_script():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "visroute.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().startswith("visroute ")


def test_debug_adds_the_traceback_and_keeps_the_exit_code(tmp_path):
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.strip() == f"error: no visroute result files under {tmp_path}"
    r = runner.invoke(app, ["--debug", "report", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.startswith("Traceback (most recent call last):")
    assert "report_directory" in r.stderr and r.stderr.rstrip().endswith(f"error: no visroute result files under {tmp_path}")


@pytest.mark.parametrize("flags, level", [([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG"), (["-q"], "ERROR"),
                                          (["--verbose", "--quiet"], "WARNING")])
def test_verbosity_flags_set_the_visroute_logger_level(flags, level):
    import logging

    r = runner.invoke(app, [*flags, "models", "--json"])
    assert r.exit_code == 0, r.output
    assert logging.getLevelName(logging.getLogger("visroute").level) == level


def test_cli_functions_are_thin():
    """Every command function (and helper) in visroute.cli is at most 40 lines, signature included."""
    import inspect
    import pkgutil

    import visroute.cli as pkg

    mods = [pkg] + [__import__(f"visroute.cli.{i.name}", fromlist=["_"]) for i in pkgutil.iter_modules(pkg.__path__)
                    if i.name != "__main__"]
    sizes = {f"{m.__name__}.{name}": len(inspect.getsourcelines(inspect.unwrap(fn))[0])
             for m in mods for name, fn in inspect.getmembers(m, inspect.isfunction)
             if inspect.unwrap(fn).__module__ == m.__name__}
    assert "visroute.cli.evaluate.eval_cmd" in sizes and "visroute.cli.main" in sizes  # decorated commands are seen
    assert not {k: v for k, v in sizes.items() if v > 40}
