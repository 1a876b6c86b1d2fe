"""Progress inside one long step: a VLM / VLM+LLM evaluation or grid cell shows a bar over its tasks (finished calls,
failed ones included and counted beside it), quiet with ``progress=False`` / ``--no-progress`` and off the terminal.

Runs the tiny random LLaVA and Llama built through the transformers loaders; stderr is replaced by a buffer that
says it is a terminal, since the bars stay quiet anywhere else.
"""

from __future__ import annotations

import io
import json
import sys

import pytest
from typer.testing import CliRunner

from visroute.cli import app

ROWS = [("n01440764_tench", "Which kind of living thing is shown?", ["a fish", "a bird", "a tree"], 0),
        ("missing", "Which animal is this?", ["dog", "cat"], 1),  # its image cannot be read: a failed call
        ("n09472597_volcano", "What can come out of this landform?", ["lava", "snow only", "nothing"], 0)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def terminal(monkeypatch):
    """A call ``terminal()`` swaps stderr for a buffer that says it is a terminal (inside the test body: pytest sets
    its own stderr at the start of each phase) and returns it."""
    def swap() -> _Terminal:
        term = _Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        return term

    return swap


@pytest.fixture()
def task_file(tmp_path, shared_data):
    f = tmp_path / "sqa.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"q{i}", "image": str(shared_data / "imagenet-sample" / f"{img}.JPEG"),
                                       "question": q, "choices": c, "answer": a})
                           for i, (img, q, c, a) in enumerate(ROWS)) + "\n")
    return f


def _pipeline(head: str, vlm_dir, llm_dir=None):
    from visroute.pipeline import PipelineSpec, build_pipeline

    extra = {"llm": f"hf:{llm_dir}"} if llm_dir is not None else {}
    return build_pipeline(PipelineSpec(head=head, vlm=f"hf:{vlm_dir}", max_tokens=4, device="cpu", **extra))


@pytest.mark.parametrize("head", ["vlm", "vlm+llm"])
def test_task_bar_reaches_the_total_and_counts_failures(head, task_file, tmp_path, terminal, tiny_llava_dir,
                                                        tiny_llama_dir):
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.tasks.model import load_tasks

    tasks, _ = load_tasks(str(task_file))
    pipeline = _pipeline(head, tiny_llava_dir, tiny_llama_dir if head == "vlm+llm" else None)
    terminal = terminal()
    doc = evaluate_tasks(pipeline, tasks, "sqa", tmp_path / "on", "mcq", progress=True)
    shown = terminal.getvalue()
    assert doc["visroute"]["n_errors"] == 1
    assert f"sqa ({head})" in shown and "3/3" in shown and "failed=1" in shown, shown
    assert "4/3" not in shown  # a vlm+llm task is counted once, after its last call

    terminal.seek(0)
    terminal.truncate()
    evaluate_tasks(pipeline, tasks, "sqa", tmp_path / "off", "mcq", progress=False)
    assert "/3" not in terminal.getvalue()


def test_no_bar_off_the_terminal(task_file, tmp_path, monkeypatch, tiny_llava_dir):
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.tasks.model import load_tasks

    tasks, _ = load_tasks(str(task_file))
    pipeline = _pipeline("vlm", tiny_llava_dir)
    pipe = io.StringIO()  # stderr redirected to a file or a pipe
    monkeypatch.setattr(sys, "stderr", pipe)
    evaluate_tasks(pipeline, tasks, "sqa", tmp_path / "o", "mcq", progress=True)
    assert "/3" not in pipe.getvalue()


def test_cli_eval_flag_reaches_the_bar(task_file, tmp_path, monkeypatch, tiny_llava_dir):
    import visroute.log

    seen = []

    class Recorded(visroute.log.Progress):
        def __init__(self, total, desc, unit="task", enabled=True):
            seen.append((total, enabled))
            super().__init__(total, desc, unit, enabled)

    monkeypatch.setattr(visroute.log, "Progress", Recorded)
    base = ["eval", "--head", "vlm", "--vlm", f"hf:{tiny_llava_dir}", "-d", str(task_file), "--max-tokens", "4",
            "--device", "cpu"]
    for flag, want in (("--no-progress", False), ("--progress", True)):
        r = CliRunner().invoke(app, base + ["--output", str(tmp_path / flag), flag])
        assert r.exit_code == 1, r.output  # one task failed: exit 1, the other two measured
        assert seen[-1] == (3, want)


def test_grid_task_cells_show_their_own_bar(task_file, tmp_path, terminal, tiny_llava_dir):
    from visroute.router.data.grid import GridSpec, run_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(f"output: {tmp_path / 'g1'}\nmax_tokens: 4\ndevice: cpu\n"
                    f"datasets:\n  - {{spec: {task_file}, name: sqa}}\n"
                    f"models:\n  - {{name: llava, head: vlm, vlm: \"hf:{tiny_llava_dir}\"}}\n")
    terminal = terminal()
    run_grid(GridSpec.load(grid), progress=False, log=lambda m: None)
    assert "sqa (vlm)" not in terminal.getvalue() and "cell" not in terminal.getvalue()

    grid.write_text(grid.read_text().replace("g1", "g2"))
    run_grid(GridSpec.load(grid), progress=True, log=lambda m: None)
    shown = terminal.getvalue()
    assert "sqa (vlm)" in shown and "/3" in shown and "1/1" in shown, shown  # the cell's bar under the grid's


def test_a_warning_during_a_bar_gets_a_line_of_its_own(terminal, restore_visroute_logger):
    """A log line written while a bar is drawn clears the bar first (else it is glued to the bar's text), and the
    bar is drawn again after it."""
    from visroute.log import Progress, configure_logging, get_logger

    term = terminal()
    configure_logging(0)
    with Progress(total=3, desc="calls", unit="call") as bar:
        bar.done(1)
        get_logger("test").warning("one upstream answer was unreadable")
        bar.done(2)
    out = term.getvalue()
    before, line, after = out.partition("warning: one upstream answer was unreadable\n")
    assert line, out
    assert before.endswith("\r"), repr(before[-80:])  # the bar was cleared to the line's start first
    assert "calls" in before and "calls" in after       # drawn before, and again after the line
