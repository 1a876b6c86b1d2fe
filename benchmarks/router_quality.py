"""Router quality on records whose structure is known (the constructed records of visroute.testing.routing: recognition
-> CLIP, reading text -> VLM, reasoning -> VLM + LLM, real MiniLM embeddings of real-sounding task texts).

Prints, per router, accuracy at lambda = 0, the performance gap recovered, the oracle gap recovered, and the cost at
which the router first matches the best single model, as a fraction of the most expensive model's cost (a published
multimodal routing benchmark reaches it at about 1/3).

    python benchmarks/router_quality.py [--n 3000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visroute.router.data.embed import TextEmbedder  # noqa: E402
from visroute.router.evaluate.curves import evaluate_router  # noqa: E402
from visroute.router.learn.routers import KNNRouter, LogisticRouter, MatrixFactorizationRouter, MLPRouter  # noqa: E402
from visroute.testing.routing import COSTS, MODELS, make_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    texts, succ, cost, kinds = make_records(args.n, args.seed)
    X = TextEmbedder().embed(texts)
    test = np.random.default_rng(args.seed).random(len(texts)) < 0.3
    routers = {"knn": KNNRouter(k=15), "logistic": LogisticRouter(epochs=200, lr=0.05),
               "mlp": MLPRouter(epochs=150, lr=0.01), "mf": MatrixFactorizationRouter(dim=16, epochs=150, lr=0.01)}
    print(f"{len(texts)} tasks ({test.sum()} test), models {MODELS}, costs {COSTS.tolist()}")
    print("| router | acc (lambda=0) | cost/task | PGR | oracle gap recovered | cost to match best single / most expensive | fit s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in routers.items():
        t = time.perf_counter()
        r.fit(X[~test], succ[~test])
        fit_s = time.perf_counter() - t
        rep = evaluate_router(r.predict_proba(X[test]), succ[test], cost[test], MODELS, COSTS, lam=0.0)
        op = rep["operating_point"]
        frac = rep["cost_to_match_best_single_fraction_of_most_expensive"]
        print(f"| {name} | {op['accuracy']:.3f} | {op['cost']:.5f} | {op['performance_gap_recovered']:.2f} | "
              f"{op['oracle_gap_recovered']:.2f} | {frac if frac is None else round(frac, 3)} | {fit_s:.1f} |")
    singles = rep["single_models"]
    print("single models: " + ", ".join(f"{k} {v['accuracy']:.3f} @ {v['cost']:.4f}" for k, v in singles.items()))
    print(f"oracle {rep['oracle']['accuracy']:.3f} @ {rep['oracle']['cost']:.5f}; random {rep['random']['accuracy']:.3f}")


if __name__ == "__main__":
    main()
