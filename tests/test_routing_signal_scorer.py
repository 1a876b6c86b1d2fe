"""The answer-aware cascade scorer's pieces (benchmarks/_scorer.py) on toys worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scorer, multi = _load("_scorer"), _load("routing_multi")  # the chain's cascade is routing_multi's


def test_responses_follow_the_table_and_keep_a_repeated_ids_first_row(tmp_path):
    df = pd.DataFrame({"sample_id": ["a", "b", "a"], "eval_name": ["arc", "arc", "arc"], "prompt": ["p", "q", "p2"],
                       "m1": [1, 0, 1], "m1|total_cost": [1, 1, 1], "m1|model_response": ["['A\\nbecause']", "['B']", "['C']"],
                       "m2": [1, 1, 1], "m2|total_cost": [2, 2, 2]})
    df.to_csv(tmp_path / "x.csv", index=False)
    table = SimpleNamespace(dataset=np.array(["arc", "arc", "mbpp"]), task_id=np.array(["b", "a", "a"]),
                            models=["m1", "m2"])
    R = scorer.responses([tmp_path / "x.csv"], table)
    assert R.tolist() == [["B", ""], ["A\nbecause", ""], ["", ""]]  # m2 has no responses; mbpp/a is not in the file


def test_scored_cascades_by_hand():
    # chain: model 0 (cost 1, acc 0.5), model 1 (cost 3, acc 0.75), model 2 (cost 10, acc 1)
    S = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [0, 1, 1]] * 2, np.float64)
    C = np.tile([1.0, 3.0, 10.0], (8, 1))
    conf = np.tile([0.9, 0.6, 0.0], (8, 1))
    conf[1::2, 0] = 0.1  # the scorer says model 0 is unsure on the tasks it gets wrong (1 and 3)
    fold_of = np.arange(8) // 4  # each fold holds the four kinds of task: the same chain
    Ss, Cs = multi.cascade_outcomes(S, C, conf, fold_of, n=5)
    at = {float(t): i for i, t in enumerate(np.r_[-np.inf, np.unique(np.quantile(conf, np.linspace(0, 1, 5))), np.inf])}
    i = at[0.6]  # model 0 stops on tasks 0 and 2 (right), the rest stop at model 1 (0.6 >= 0.6, right)
    assert Ss[i].tolist() == [1.0] * 8 and Cs[i].tolist() == [1, 4, 1, 4] * 2
    assert Ss[-1].tolist() == [1.0] * 8 and Cs[-1].tolist() == [14.0] * 8  # never confident: every call paid
    Sp, Cp = scorer.pair_cascades(S, C, conf, fold_of, n=5)
    assert len(Sp) == 3 * len(Ss)  # (0, 1), (0, 2), (1, 2)
    pair_02 = Cp[len(Ss) + i]  # model 0, then model 2: 1 where model 0 stops, 11 elsewhere
    assert pair_02.tolist() == [1, 11, 1, 11] * 2


def test_the_scorer_reads_the_answer():
    rng = np.random.default_rng(0)
    n = 80
    S = rng.integers(0, 2, (n, 2)).astype(float)
    Xt = rng.normal(size=(n, 4))
    Xa = {j: np.c_[S[:, j] * 2 - 1 + 0.1 * rng.normal(size=n), rng.normal(size=(n, 3))] for j in range(2)}  # says it
    fold_of = np.arange(n) % 4
    with_answer, task_only = scorer.scorer_oof(Xt, Xa, S, fold_of), scorer.scorer_oof(Xt, None, S, fold_of)
    assert ((with_answer > 0.5) == (S > 0.5)).mean() > 0.95 and ((task_only > 0.5) == (S > 0.5)).mean() < 0.75
