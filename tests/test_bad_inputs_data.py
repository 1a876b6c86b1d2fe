"""Bad data inputs (issue 12, items 2, 4 and 6): each is a clear one-line error or a counted skip, never a
traceback, a hang or a machine-sized allocation.

Groups: manifest labels; files that are not regular files; the pixel limit (a 13000x13000 PNG, generated
streamed so the test itself stays small); metrics (top-5 with fewer than 5 classes, out-of-range labels);
malformed description / label / template / price files; honest costs. CLI cases run the installed
``visroute`` in a child process with a deadline, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visroute.data.datasets import DatasetError, load_dataset
from visroute.data.images import (DEFAULT_MAX_PIXELS, ImageDecodeError, PreprocessedItems, find_images, load_image,
                                  resolve_max_pixels)
from visroute.data.text import load_templates, parse_labels, read_string_list
from visroute.heads.description_sets import DescriptionError, load_descriptions
from visroute.errors import VisrouteError
from visroute.eval.metrics import classification_metrics, confusion_matrix, topk_accuracy
from visroute.tasks.costs import PriceTable

VISROUTE = str(Path(sys.executable).parent / "visroute")
BIG = 13000  # a 13000x13000 RGB image decodes to ~0.5-0.7 GB: the case the pixel limit exists for


def write_big_png(path: Path, width: int = BIG, height: int = BIG) -> Path:
    """A constant grey RGB PNG of any size, written row by row: ~0.5 MB on disk, little memory to write."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj()
    row = b"\x00" + b"\x80" * (3 * width)  # filter byte 0, then the pixels
    idat = b"".join([comp.compress(row) for _ in range(height)] + [comp.flush()])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging forever) if the block blocks, e.g. on opening a FIFO."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_MEASURE = """
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_measured(argv: list[str], cwd: Path, timeout: int = 180, **env) -> dict:
    """Run ``argv`` in a grandchild; return its exit code, output and peak RSS (RUSAGE_CHILDREN of a fresh parent)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    p = subprocess.Popen([sys.executable, "-c", _MEASURE, *argv], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the group of the child started here, grandchild included
        p.communicate()
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout}s")
    assert p.returncode == 0, err
    return json.loads(out)


def assert_one_line_error(res: dict, *needles: str) -> str:
    assert "Traceback" not in res["stderr"], res["stderr"]
    errors = [line for line in res["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res["stderr"]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture()
def img(tmp_path) -> Path:
    p = tmp_path / "ok.png"
    Image.new("RGB", (16, 12), (10, 120, 200)).save(p)
    return p


# ---------------------------------------------------------------- labels in manifests

LABEL_CASES = [
    # (file name, contents, line named in the error, words of the message)
    ("frac.csv", "path,label\nok.png,0\nok.png,1.5\n", 3, "not a whole number"),
    ("mixed.csv", "path,label\nok.png,0\nok.png,abc\n", 3, "class name 'abc'"),
    ("empty.csv", "path,label\nok.png,0\nok.png,\n", 3, "missing"),
    ("negative.csv", "path,label\nok.png,0\nok.png,-1\n", 3, "negative"),
    ("huge.csv", "path,label\nok.png,0\nok.png,1e9\n", 3, "label 1000000000 is out of range"),
    ("nan.csv", "path,label\nok.png,0\nok.png,NaN\n", 3, "missing"),
    ("inf.csv", "path,label\nok.png,inf\n", 2, "not a finite number"),
    ("short_row.csv", "path,label\nok.png,0\nok.png\n", 3, "missing"),
    ("long_row.csv", "path,label\nok.png,0,extra\n", 2, "3 fields, but the header has 2"),
    ("long_field.csv", "path,label\nok.png,0\n" + "x" * 200_000 + ",1\n", 3, "not valid CSV (field larger"),
    ("null.jsonl", '{"path": "ok.png", "label": 0}\n{"path": "ok.png", "label": null}\n', 2, "missing"),
    ("nan.jsonl", '{"path": "ok.png", "label": NaN}\n', 1, "missing"),
    ("bool.jsonl", '{"path": "ok.png", "label": true}\n', 1, "boolean"),
    ("list.jsonl", '{"path": "ok.png", "label": [1]}\n', 1, "list value is not a class index"),
    ("frac.jsonl", '{"path": "ok.png", "label": 0}\n\n{"path": "ok.png", "label": 2.5}\n', 3, "not a whole number"),
    ("bigint.jsonl", '{"path": "ok.png", "label": ' + "9" * 30 + "}\n", 1, "out of range"),
    ("nolabel.jsonl", '{"path": "ok.png", "label": 0}\n{"path": "ok.png"}\n', 2, "missing"),
    ("names_then_index.jsonl", '{"path": "ok.png", "label": "cat"}\n{"path": "ok.png", "label": 3}\n', 2,
     "class index 3"),
    ("badpath.jsonl", '{"path": 5, "label": 0}\n', 1, "'path' value must be an image file path"),
    ("badjson.jsonl", '{"path": "ok.png", "label": 0}\n{"path": \n', 2, "not valid JSON"),
]


@pytest.mark.parametrize("name, text, line, words", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_bad_manifest_labels_are_one_error_naming_the_row(tmp_path, img, name, text, line, words):
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(DatasetError) as e:
        load_dataset(str(manifest))
    msg = one_line(e.value)
    assert isinstance(e.value, VisrouteError)
    assert msg.startswith(f"{manifest}:{line}:") and words in msg, msg


def test_labels_out_of_range_for_the_given_class_names(tmp_path, img):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "ok.png", "label": 0}\n{"path": "ok.png", "label": 2.0}\n')
    with pytest.raises(DatasetError, match=r"m.jsonl:2: label 2 is out of range for 2 class names"):
        load_dataset(str(manifest), classnames=["a", "b"])
    ds = load_dataset(str(manifest), classnames=["a", "b", "c", "d"])  # a whole 2.0 is index 2; classes may be unused
    assert ds.labels.tolist() == [0, 2] and ds.classnames == ["a", "b", "c", "d"]
    assert load_dataset(str(manifest)).classnames == ["0", "1", "2"]


def test_manifest_not_utf8_is_one_error(tmp_path):
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes(b"path,label\n\xe9t\xe9.png,0\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(str(manifest))


def test_hf_dataset_unlabelled_rows_are_an_error_naming_the_row(tmp_path, img):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [str(img)] * 3, "label": [0, 1, -1]}, features=feats)
    ds.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DatasetError, match=r"row 2: label -1 is negative"):
        load_dataset(f"hf:{tmp_path / 'hf'}")


# ---------------------------------------------------------------- files that are not regular files

@pytest.fixture()
def specials(tmp_path) -> dict[str, Path]:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: forever
    (tmp_path / "folder.png").mkdir()
    return {"fifo": fifo, "device": Path("/dev/zero"), "directory": tmp_path / "folder.png"}


@pytest.mark.parametrize("kind, reason", [("fifo", "FIFO"), ("device", "device"), ("directory", "directory")])
def test_special_files_are_refused_without_opening(specials, kind, reason):
    with deadline(20), pytest.raises(ImageDecodeError) as e:
        load_image(specials[kind])
    assert one_line(e.value) == f"not a regular file (a {reason})"


def test_special_files_in_a_manifest_are_counted_skips(tmp_path, img, specials):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{k}\n" for k, p in
                                                  enumerate([img, specials["fifo"], specials["device"], specials["directory"]])))
    ds = load_dataset(str(manifest))
    with deadline(30):
        items = [PreprocessedItems(ds, np.asarray)[k] for k in range(len(ds))]
    assert items[0][2] is None and items[0][1].shape == (12, 16, 3)
    assert [err for _, _, err in items[1:]] == ["not a regular file (a FIFO)", "not a regular file (a device)",
                                                "not a regular file (a directory)"]


def test_folder_search_counts_special_files_with_image_names(tmp_path, img, specials):
    found, skipped = find_images([tmp_path, specials["device"]])
    assert found == [img]
    assert {(Path(s.path).name, s.reason) for s in skipped} == {
        ("pipe.png", "not a regular file (a FIFO)"), ("zero", "not a regular file (a device)")}


# ---------------------------------------------------------------- the pixel limit

@pytest.fixture(scope="module")
def big_png(tmp_path_factory) -> Path:
    return write_big_png(tmp_path_factory.mktemp("big") / "big.png")


def test_pixel_limit_default_env_and_parameter(img, monkeypatch):
    assert resolve_max_pixels() == DEFAULT_MAX_PIXELS < BIG * BIG
    with pytest.raises(ImageDecodeError, match=r"16x12 = 192 pixels, over the limit of 100"):
        load_image(img, max_pixels=100)
    monkeypatch.setenv("VISROUTE_MAX_PIXELS", "191")
    with pytest.raises(ImageDecodeError, match="over the limit of 191"):
        load_image(img)
    assert load_image(img, max_pixels=192).size == (16, 12)  # the parameter wins over the environment
    monkeypatch.setenv("VISROUTE_MAX_PIXELS", "0")
    assert resolve_max_pixels() is None and load_image(img).size == (16, 12)


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "nan"])
def test_malformed_pixel_limit_is_one_error(monkeypatch, value):
    monkeypatch.setenv("VISROUTE_MAX_PIXELS", value)
    with pytest.raises(VisrouteError, match="VISROUTE_MAX_PIXELS") as e:
        resolve_max_pixels()
    one_line(e.value)


def test_big_png_is_refused_from_its_header_in_little_memory(tmp_path, big_png):
    """The 13000^2 PNG via a manifest, in a child without torch: decoding it would need > 500 MB."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{big_png},0\n")
    code = ("import sys; from visroute.data.datasets import load_dataset; from visroute.data.images import "
            "PreprocessedItems; ds = load_dataset(sys.argv[1]); print(PreprocessedItems(ds, lambda im: im)[0][2])")
    res = run_measured([sys.executable, "-c", code, str(manifest)], tmp_path, timeout=120)
    assert res["rc"] == 0 and "Traceback" not in res["stderr"], res["stderr"]
    assert "13000x13000 = 169,000,000 pixels, over the limit" in res["stdout"]
    assert res["maxrss_mb"] < 300, res["maxrss_mb"]  # far below 1 GB: nothing was decoded


def test_cli_classify_skips_the_big_png_without_decoding_it(tmp_path, big_png, img):
    """A CLI run on the 13000^2 PNG costs no more memory than one on a small image (importing torch alone
    maps ~0.9 GB here, so the decode — 0.5 GB or more — is what the difference would show)."""
    args = ["classify", "--labels", "cat,dog", "--model", "random-tiny", "--workers", "0"]
    small = run_measured([VISROUTE, *args, str(img)], tmp_path)
    big = run_measured([VISROUTE, *args, str(big_png)], tmp_path)
    assert small["rc"] == 0 and big["rc"] == 1, big["stderr"]
    assert "Traceback" not in big["stderr"] and "over the limit" in big["stderr"] and "skipped 1" in big["stderr"]
    assert big["maxrss_mb"] - small["maxrss_mb"] < 250, (small["maxrss_mb"], big["maxrss_mb"])


# ---------------------------------------------------------------- metrics

def test_top5_is_not_applicable_below_five_classes():
    y = np.array([0, 1, 2, 2])
    top = np.array([[0, 1, 2], [2, 1, 0], [2, 0, 1], [1, 0, 2]])
    m = classification_metrics(y, top, 3)
    assert math.isnan(m["acc5"]) and m["acc1"] == 0.5  # not a trivial 1.0
    assert m["confusion_matrix"].shape == (3, 3) and m["confusion_matrix"].sum() == 4
    five = classification_metrics(np.array([0, 4]), np.array([[1, 2, 3, 4, 0], [0, 1, 2, 3, 4]]), 5)
    assert five["acc5"] == 1.0 and five["acc1"] == 0.0
    assert math.isnan(topk_accuracy(y, top, 5, n_classes=3)) and topk_accuracy(y, top, 3, n_classes=3) == 1.0


@pytest.mark.parametrize("labels", [[0, 1, 10**9], [0, -1, 1], [0.5, 1, 0]])
def test_metrics_refuse_labels_outside_the_classes_before_allocating(labels):
    with pytest.raises(VisrouteError) as e:
        classification_metrics(np.array(labels), np.array([[0, 1], [1, 0], [0, 1]]), 3)
    one_line(e.value)
    with pytest.raises(VisrouteError):
        confusion_matrix(np.array(labels), np.array([0, 1, 0]), 3)


def test_many_classes_give_per_class_recall_without_a_dense_matrix():
    n = 50_000  # a dense int64 matrix would need 20 GB
    y = np.array([0, 7, 49_999, 7])
    m = classification_metrics(y, np.array([[0], [7], [3], [1]]), n)
    assert m["confusion_matrix"] is None and m["acc1"] == 0.5
    assert m["per_class_accuracy"][7] == 0.5 and m["per_class_accuracy"][49_999] == 0.0
    assert np.isnan(m["per_class_accuracy"][1]) and m["mean_per_class_recall"] == pytest.approx(0.5)


# ---------------------------------------------------------------- malformed description / label / template files

DESCRIPTION_CASES = [
    ("list.json", "[1, 2]", "expected a JSON object, found list"),
    ("truncated.json", '{"cat": ["has fur"', "not valid JSON"),
    ("value.json", '{"cat": "has fur"}', "class 'cat' must be a list of strings, found str"),
    ("item.json", '{"cat": ["has fur", 3]}', "item 1 is int"),
    ("empty.json", "{}", "empty"),
    ("classes.json", '{"format": "visroute-descriptions", "classes": 3}', "'classes' must be a list"),
    ("noname.json", '{"format": "visroute-descriptions", "classes": [{"descriptions": []}]}', "classes[0]"),
    ("prov.json", '{"format": "visroute-descriptions", "classes": [{"name": "a"}], "provenance": "x"}',
     "'provenance' must be an object"),
    ("kind.json", '{"format": "visroute-descriptions", "kind": "poem", "classes": [{"name": "a"}]}',
     "unknown description kind 'poem'"),
    ("disclip.json", '{"index_to_descriptions": {"0": ["x"]}, "index_to_classname": {"zero": "a"}}',
     "must be integers"),
]


@pytest.mark.parametrize("name, text, words", DESCRIPTION_CASES, ids=[c[0] for c in DESCRIPTION_CASES])
def test_malformed_description_files_name_file_and_key(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DescriptionError) as e:
        load_descriptions(path)
    msg = one_line(e.value)
    assert str(path) in msg and words in msg, msg


def test_description_file_that_is_a_fifo_or_not_utf8(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    with deadline(20), pytest.raises(DescriptionError, match="is not a regular file"):
        load_descriptions(tmp_path / "pipe.json")
    (tmp_path / "latin.json").write_bytes(b'{"caf\xe9": ["x"]}')
    with pytest.raises(DescriptionError, match="not UTF-8"):
        load_descriptions(tmp_path / "latin.json")


@pytest.mark.parametrize("name, text, spec_tail, words", [
    ("t.json", '["a photo of a {c}.", 3]', "", "item 1 is int"),
    ("t.json", '{"cifar10": "a photo of a {c}."}', ":cifar10", "key 'cifar10': expected a JSON list of strings, found str"),
    ("t.json", '["a photo of a {c}."', "", "not valid JSON"),
    ("t.txt", "a photo\n", "", "without the {c} placeholder"),
    ("t.txt", b"a photo of a {c} \xff\n", "", "not UTF-8"),
])
def test_malformed_template_files_name_the_file(tmp_path, name, text, spec_tail, words):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(VisrouteError) as e:
        load_templates(str(path) + spec_tail)
    msg = one_line(e.value)
    assert str(path) in msg and words in msg, msg


def test_malformed_label_files_name_the_file(tmp_path):
    (tmp_path / "l.json").write_text('["cat", ""]')
    with pytest.raises(VisrouteError, match=r"labels file '.*l\.json': blank class name"):
        parse_labels(labels_file=str(tmp_path / "l.json"))
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(VisrouteError, match="is not a regular file"):
        read_string_list(str(tmp_path / "dir.txt"), "labels", VisrouteError)
    (tmp_path / "l.csv").write_text("classname\ncat\n" + "x" * 200_000 + "\n")  # over csv's field size limit
    with pytest.raises(VisrouteError, match=r"l\.csv', line 3: not valid CSV \(field larger than field limit"):
        parse_labels(labels_file=str(tmp_path / "l.csv"))


# ---------------------------------------------------------------- honest costs

def test_endpoint_without_a_price_is_unknown_with_one_warning(caplog):
    table = PriceTable()
    spec = "openai-compatible:http://127.0.0.1:9/v1#no-price-model"
    with caplog.at_level(logging.WARNING, logger="visroute.tasks.costs"):
        costs = [table.price(spec).cost(100, 20, 1, 3.0), PriceTable().price(spec).cost(1, 1, 0, 1.0)]
    assert all(math.isnan(c) for c in costs)
    assert len([r for r in caplog.records if spec in r.getMessage()]) == 1
    assert not PriceTable().price(spec).known


def test_local_models_keep_the_gpu_price_and_known_endpoints_their_rates():
    table = PriceTable()
    assert table.price("hf:/models/clip").cost(0, 0, 1, 3600.0) == pytest.approx(2.0)
    assert table.price("random-tiny").per_second == pytest.approx(2.0 / 3600)
    mini = table.price("openai-compatible:https://api.openai.com/v1#gpt-4o-mini")
    assert mini.cost(1_000_000, 1_000_000, 1, 5.0) == pytest.approx(0.75)  # tokens only, no invented seconds
    own = PriceTable({"*": {"per_image": 0.01}})  # a user's own catch-all does price endpoints
    assert own.price("openai-compatible:http://127.0.0.1:9/v1#m").cost(0, 0, 2, 1.0) == pytest.approx(0.02)


@pytest.mark.parametrize("text, words", [
    ('{"*": 5}', "must be an object"),
    ("[1]", "expected a JSON object"),
    ('{"*": {"per_second": -1}}', "non-negative number"),
    ('{"*": {"per_hour": 1}}', "unknown field(s) ['per_hour']"),
    ('{"*": {"per_second": 1', "not valid JSON at line 1"),
])
def test_malformed_price_tables_name_the_file(tmp_path, text, words):
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(VisrouteError) as e:
        PriceTable.load(path)
    msg = one_line(e.value)
    assert str(path) in msg and words in msg, msg


# ---------------------------------------------------------------- the command line

def test_cli_eval_label_1e9_is_one_line_in_little_memory(tmp_path, img):
    """A 1e9 label would mean 1e9 class names (~60 GB) and a 1e18-cell matrix; it costs nothing beyond the
    imports (``import torch`` alone maps ~0.9 GB here, hence the baseline)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{img},0\n{img},1e9\n")
    res = run_measured([VISROUTE, "eval", "-d", str(manifest), "-m", "random-tiny", "--output", str(tmp_path / "out"),
                        "--no-progress"], tmp_path)
    assert res["rc"] == 2
    assert_one_line_error(res, f"{manifest}:3", "label 1000000000 is out of range")
    imports = run_measured([sys.executable, "-c", "import torch, transformers, open_clip, visroute.eval.run"], tmp_path)
    assert res["maxrss_mb"] - imports["maxrss_mb"] < 300, (imports["maxrss_mb"], res["maxrss_mb"])


def test_label_1e9_stays_far_under_1gb_without_torch(tmp_path, img):
    """The same manifest and a 1e9 label given to the metrics, in a child that imports no model code."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"path": "{img}", "label": 0}}\n{{"path": "{img}", "label": 1e9}}\n')
    code = ("import sys, numpy as np\nfrom visroute.errors import VisrouteError\n"
            "from visroute.data.datasets import load_dataset\nfrom visroute.eval.metrics import classification_metrics\n"
            "for f in (lambda: load_dataset(sys.argv[1]), lambda: classification_metrics(np.array([0, 10**9]), "
            "np.array([[0], [1]]), 2)):\n    try:\n        f()\n    except VisrouteError as e:\n        print(e)\n")
    res = run_measured([sys.executable, "-c", code, str(manifest)], tmp_path, timeout=120)
    assert res["rc"] == 0 and "Traceback" not in res["stderr"], res["stderr"]
    assert "m.jsonl:2: label 1000000000 is out of range" in res["stdout"]
    assert "label 1000000000 at position 1 is not a class index" in res["stdout"]
    assert res["maxrss_mb"] < 300, res["maxrss_mb"]


@pytest.mark.parametrize("row, words", [("abc", "class name 'abc'"), ("-3", "negative"), ("", "missing")])
def test_cli_eval_bad_label_rows(tmp_path, img, row, words):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{img},0\n{img},{row}\n")
    res = run_measured([VISROUTE, "eval", "-d", str(manifest), "-m", "random-tiny", "--output", str(tmp_path / "out"),
                        "--no-progress"], tmp_path)
    assert res["rc"] == 2
    assert_one_line_error(res, f"{manifest}:3", words)


def test_cli_eval_counts_special_files_in_a_manifest_as_skips(tmp_path, img, specials):
    manifest = tmp_path / "m.csv"
    rows = [img, specials["fifo"], specials["device"], specials["directory"], img]
    manifest.write_text("path,label\n" + "".join(f"{p},{k % 2}\n" for k, p in enumerate(rows)))
    res = run_measured([VISROUTE, "eval", "-d", str(manifest), "-m", "random-tiny", "--output", str(tmp_path / "out"),
                        "--no-progress", "--workers", "0"], tmp_path, timeout=240)
    assert "Traceback" not in res["stderr"], res["stderr"]
    doc = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert doc["visroute"]["n_evaluated"] == 2 and doc["visroute"]["n_skipped"] == 3
    assert sorted(s["reason"] for s in doc["visroute"]["skipped"]) == [
        "not a regular file (a FIFO)", "not a regular file (a device)", "not a regular file (a directory)"]
    assert doc["metrics"]["acc5"] is None  # 2 classes: top-5 does not apply (NaN, written as null)
    assert res["rc"] == 1  # some items were skipped


def test_cli_classify_special_files_are_counted_skips(tmp_path, img, specials):
    res = run_measured([VISROUTE, "classify", str(img), str(specials["fifo"]), str(specials["device"]),
                        "--labels", "cat,dog", "--model", "random-tiny", "--workers", "0"], tmp_path)
    assert res["rc"] == 1 and "Traceback" not in res["stderr"]
    assert f"skipped: {specials['fifo']}: not a regular file (a FIFO)" in res["stderr"]
    assert "skipped: /dev/zero: not a regular file (a device)" in res["stderr"]
    assert "classified 1 image(s), skipped 2" in res["stderr"]


@pytest.mark.parametrize("flag, name, text, words", [
    ("--templates", "t.json", '["a {c}", 1]', "item 1 is int"),
    ("--labels-file", "l.json", '{"a": ["cat"]}', "is keyed by dataset"),
])
def test_cli_classify_malformed_files_are_one_line(tmp_path, img, flag, name, text, words):
    (tmp_path / name).write_text(text)
    extra = ["--labels", "cat,dog"] if flag != "--labels-file" else []
    res = run_measured([VISROUTE, "classify", str(img), flag, str(tmp_path / name), *extra,
                        "--model", "random-tiny"], tmp_path)
    assert res["rc"] == 2
    assert_one_line_error(res, str(tmp_path / name), words)


def test_cli_classify_malformed_pixel_limit_is_one_line(tmp_path, img):
    res = run_measured([VISROUTE, "classify", str(img), "--labels", "cat,dog", "--model", "random-tiny",
                        "--workers", "0"], tmp_path, VISROUTE_MAX_PIXELS="lots")
    assert res["rc"] == 2
    assert_one_line_error(res, "VISROUTE_MAX_PIXELS='lots'")


def test_cli_eval_malformed_description_file_is_one_line(tmp_path, img):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{img},cat\n{img},dog\n")
    (tmp_path / "d.json").write_text('{"cat": ["has fur"], "dog": "barks"}')
    res = run_measured([VISROUTE, "eval", "-d", str(manifest), "-m", "random-tiny", "--head", "descriptions",
                        "--descriptions", str(tmp_path / "d.json"), "--output", str(tmp_path / "out"),
                        "--no-progress", "--workers", "0"], tmp_path)
    assert res["rc"] == 2
    assert_one_line_error(res, str(tmp_path / "d.json"), "class 'dog' must be a list of strings")
