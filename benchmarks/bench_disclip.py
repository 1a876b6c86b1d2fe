"""DisCLIP-style selection + classname-free w_cls sweep: visroute against the DisCLIP reference code.

ImageNet scale: the 1000 classes and the DCLIP ImageNet description pool (``descriptions_ilsvrc_dclip.json``
from ``--data``/descriptions/disclip), synthetic L2-normalised float32 embeddings (``--dim``), ``--n-sel``
selection images per class, k=3 candidates, m=5 descriptions, and the reference's default weight range
``np.arange(0, 40, 0.25)`` (160 weights). Inputs (seeded) are written as .npy files that both sides read.

What is timed, inputs loaded and imports done on both sides, each side in its own subprocess:

* visroute: ``DiscriminativeSelectionClassifier(...).fit(classnames, X_sel, y_sel, text_embeddings=...)``
  (precomputed text embeddings) and ``head.sweep(X, y, weights)``: selection once, every weight reusing it.
* reference (CompVis/DisCLIP, commit cdba1ba, ``method.py``): ``get_top_k_ambiguous_classes_0s_per_image``,
  ``get_selection_masks_from_vlm_feedback_imagewise``, main.py's fallback loop (restated here) and
  ``eval_cls_ful_des_plus_cls_less_des_imagewise`` over the 160 weights. method.py is loaded from a checkout
  (``--disclip-repo``; get one with ``git clone https://github.com/CompVis/DisCLIP && git -C DisCLIP checkout
  cdba1ba``) with ``torch.float16`` read as ``torch.float32`` (CPU matmuls refuse mixed dtypes); its
  ``utils.save_eval_data`` (YAML files) and ``torchmetrics.Accuracy`` are replaced by in-memory recorders,
  which is how the reference's predictions per weight are read back. No reference code is in this repository,
  and nothing needs installing: the reference runs with this venv's interpreter.

Outputs are compared on every image: candidates, the selected description sets, fallback flags and the
predictions for every weight. The reference needs about 4.5 x N x k x (C + P) x 4 bytes of memory, so a size that
would not fit in MemAvailable is not run and its time is extrapolated (labelled) from the largest measured size.

Usage: ``python benchmarks/bench_disclip.py --disclip-repo PATH [--sizes 5000,50000] [--ref-sizes 5000,50000]``.
Writes benchmarks/results/bench_disclip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timed, data_dir, write_results  # noqa: E402

N_GROUPS, GROUP_WEIGHT = 100, 0.9
CAPTION_NOISE, DESC_CENTRE, DESC_NOISE, DESC_BIAS = 0.5, 0.6, 1.0, 1.0
IMAGE_NOISE, GAMMA_HI = 3.0, 0.5
WEIGHTS = "np.arange(0, 40, 0.25)"


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def class_descriptions(path: Path) -> list[list[str]]:
    data = json.loads(Path(path).read_text())
    keys = list(data["index_to_classname"])
    assert keys == [str(i) for i in range(len(keys))], "class indices must be 0..C-1 in order"
    return [list(data["index_to_descriptions"][k]) for k in keys]


def make_inputs(descriptions: Path, n_images: int, dim: int, n_sel: int, seed: int, workdir: Path) -> dict:
    """Class centres in confusable groups; captions, descriptions (with a shared 'modality gap' direction) and
    images around them, so some candidates have no separating description and the fallback fires."""
    from visroute.heads.selection import disclip_pool

    descs = class_descriptions(descriptions)
    C = len(descs)
    pool = disclip_pool(descs)
    index = {d: i for i, d in enumerate(pool)}
    owner = np.full(len(pool), -1)
    for c, ds in enumerate(descs):
        for d in ds:
            owner[index[d]] = c if owner[index[d]] < 0 else owner[index[d]]
    rng = np.random.default_rng(seed)
    noise = lambda n: rng.standard_normal((n, dim)) / np.sqrt(dim)  # noqa: E731
    groups = normalise(rng.standard_normal((N_GROUPS, dim)))
    centres = normalise(GROUP_WEIGHT * groups[rng.integers(0, N_GROUPS, C)]
                        + np.sqrt(1 - GROUP_WEIGHT ** 2) * normalise(rng.standard_normal((C, dim))))
    b = normalise(rng.standard_normal(dim))
    gamma = rng.uniform(0.0, GAMMA_HI, size=C)
    arrays = {"caption": normalise(centres + CAPTION_NOISE * noise(C)),
              "pool_emb": normalise(DESC_CENTRE * centres[owner] + DESC_NOISE * noise(len(pool)) + DESC_BIAS * b)}
    images = lambda y: normalise(centres[y] + IMAGE_NOISE * noise(len(y)) + gamma[y, None] * b)  # noqa: E731
    sel_y = np.repeat(np.arange(C), n_sel)
    eval_y = rng.permutation(np.repeat(np.arange(C), -(-n_images // C)))[:n_images]
    arrays.update(sel_X=images(sel_y), eval_X=images(eval_y))
    workdir.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(workdir / f"{name}.npy", arr.astype(np.float32))
    np.save(workdir / "sel_y.npy", sel_y.astype(np.int64))
    np.save(workdir / "eval_y.npy", eval_y.astype(np.int64))
    (workdir / "params.json").write_text(json.dumps({"descriptions": str(descriptions), "n_sel": n_sel, "k": 3, "m": 5}))
    return {"classes": C, "pool": len(pool), "dim": dim}


def _load(workdir: Path, n: int):
    params = json.loads((workdir / "params.json").read_text())
    ld = lambda name: np.load(workdir / f"{name}.npy")  # noqa: E731
    return params, ld("caption"), ld("pool_emb"), ld("sel_X"), ld("sel_y"), ld("eval_X")[:n], ld("eval_y")[:n]


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def visroute_worker(workdir: Path, n: int, out: Path, repeat: int) -> None:
    import torch

    from visroute.heads.description_sets import DescriptionSet
    from visroute.heads.selection import DiscriminativeSelectionClassifier, disclip_pool

    params, caption, pool_emb, sel_X, sel_y, X, y = _load(workdir, n)
    descs = class_descriptions(Path(params["descriptions"]))
    names = [f"class{i}" for i in range(len(descs))]  # ImageNet repeats some names; the embeddings are synthetic
    table = dict(zip(disclip_pool(descs), pool_emb))
    table.update(zip([f"A photo of a {c}." for c in names], caption))
    weights = [float(w) for w in eval(WEIGHTS)]  # noqa: S307 - the reference's own range expression
    X_t, sel_t = torch.from_numpy(X), torch.from_numpy(sel_X)

    class NoEncoder:  # every text embedding is given: encoding one would be a bug
        score_rule, logit_scale, logit_bias = "softmax", 100.0, 0.0

        def encode_texts(self, texts, batch_size=1024):
            raise AssertionError("a text was encoded")

    seconds, head, rows = [], None, None
    for _ in range(repeat):
        with Timed() as t:
            head = DiscriminativeSelectionClassifier(NoEncoder(), DescriptionSet(names, descs), k=params["k"],
                                                     m=params["m"], n_per_class=params["n_sel"])
            head.fit(names, sel_t, sel_y, text_embeddings=table)
            rows = head.sweep(X_t, y, weights)
        seconds.append(t.record())
    from visroute.heads.selection import masked_mean_similarity

    topk, selected, fallback = head.select(X_t)  # the memo: no selection recomputed
    desc, cap = masked_mean_similarity(X_t, head.pool_embeddings_, selected), head._caption_scores(X_t, topk)
    preds = np.stack([torch.gather(topk, 1, (desc + w * cap if w else desc).argmax(1, keepdim=True)).squeeze(1).numpy()
                      for w in weights])  # what predict() gives at each weight (same arithmetic), untimed
    np.savez(out, topk=topk.numpy(), selected=selected.numpy(), fallback=fallback.numpy(), predictions=preds,
             acc=np.array([r["acc1"] for r in rows]), peak_mib=_hwm_mib(), runs=json.dumps(seconds), desc=desc.numpy(),
             cap=cap.numpy(), weights=np.array(weights))


def reference_worker(workdir: Path, n: int, out: Path, repo: Path) -> None:
    import torch

    recorded: list[np.ndarray] = []

    class Accuracy:  # torchmetrics.Accuracy as method.py uses it, keeping the predictions it is shown
        def __init__(self, task=None, num_classes=None):
            self.preds, self.target = None, None

        def to(self, device):
            return self

        def __call__(self, preds, target):
            self.preds, self.target = preds, target
            if preds.ndim == 1:
                recorded.append(preds.cpu().numpy().copy())

        def compute(self):
            p = self.preds if self.preds.ndim == 1 else self.preds.argmax(1)
            return (p == self.target).float().mean()

    sys.modules["torchmetrics"] = types.SimpleNamespace(Accuracy=Accuracy)
    sys.modules["utils"] = types.SimpleNamespace(save_eval_data=lambda *a, **k: None)
    source = (repo / "method.py").read_text().replace("torch.float16", "torch.float32")
    method = types.ModuleType("disclip_method")
    exec(compile(source, str(repo / "method.py"), "exec"), method.__dict__)  # noqa: S102 - the reference, unchanged but for dtype
    params, caption, pool_emb, sel_X, sel_y, X, y = _load(workdir, n)
    descs = class_descriptions(Path(params["descriptions"]))
    C, P, k, m = len(descs), len(pool_emb), params["k"], params["m"]
    run = {"k_ambiguous_imagewise_classes": k, "m_relevant_descriptions": m, "n_reference_samples": params["n_sel"],
           "calculation_device": "cpu", "cls_weight_range": WEIGHTS}
    from visroute.heads.selection import disclip_pool

    index = {d: i for i, d in enumerate(disclip_pool(descs))}
    T = lambda a: torch.from_numpy(a)  # noqa: E731
    cap, desc, selX, evX, evy = T(caption), T(pool_emb), T(sel_X), T(X), T(y)
    with Timed() as t:
        llm_mask = {str(c): torch.zeros(P).index_fill_(0, torch.tensor([index[d] for d in ds]), 1.0)
                    for c, ds in enumerate(descs)}  # main.py's LLM assignment masks (the fallback)
        topk = method.get_top_k_ambiguous_classes_0s_per_image(evX, evy, cap, run)
        masks = method.get_selection_masks_from_vlm_feedback_imagewise(selX, evy, desc, topk, torch.arange(C), run)
        fallback = torch.zeros(len(X), k, dtype=torch.bool)
        for i in range(len(X)):  # main.py: an empty selection takes the class's first m descriptions
            for j in range(k):
                if torch.all(masks[i, j, C:] == 0):
                    fallback[i, j] = True
                    raw = llm_mask[str(int(topk[i, j]))].clone()
                    raw[raw.nonzero().squeeze(1)[m:]] = 0
                    masks[i, j, C:] = raw
        method.eval_cls_ful_des_plus_cls_less_des_imagewise(cap, desc, masks, evX, evy, run, [str(c) for c in range(C)],
                                                            "selected", topk)
    sel = masks[:, :, C:]
    selected = np.full((len(X), k, m), -1)
    for i, j in zip(*np.nonzero(sel.sum(-1).numpy())):
        ids = sel[i, j].nonzero().squeeze(1).numpy()[:m]
        selected[i, j, : len(ids)] = ids
    np.savez(out, topk=topk.numpy(), selected=selected, fallback=fallback.numpy(), predictions=np.stack(recorded[:160]),
             peak_mib=_hwm_mib(), runs=json.dumps([t.record()]))


def sorted_sets(selected: np.ndarray) -> np.ndarray:
    big = np.iinfo(np.int64).max
    s = np.sort(np.where(selected >= 0, selected, big), axis=-1)
    return np.where(s == big, -1, s)


def prediction_agreement(v: dict, r: dict) -> dict:
    """How many of the (weight, image) predictions differ, and by how much the two candidates' scores differ
    there (relative to the score): a difference at float32 rounding level is a tie the two sums break apart."""
    diff = np.argwhere(v["predictions"] != r["predictions"])
    gaps = []
    for wi, i in diff:
        w = float(v["weights"][wi])
        score = v["desc"][i] + w * v["cap"][i] if w else v["desc"][i]
        a, b = (int(np.flatnonzero(v["topk"][i] == c)[0]) for c in (v["predictions"][wi, i], r["predictions"][wi, i]))
        gaps.append(abs(float(score[a] - score[b])) / max(abs(float(score[a])), 1e-12))
    return {"predictions_total": int(v["predictions"].size), "predictions_differing": int(len(diff)),
            "differing_max_relative_score_gap": max(gaps) if gaps else None}


def run_worker(kind: str, workdir: Path, n: int, args) -> dict:
    out = workdir / f"{kind}_{n}.npz"
    cmd = [sys.executable, __file__, "--worker", kind, "--workdir", str(workdir), "--n", str(n), "--out", str(out),
           "--repeat", str(args.repeat)] + (["--disclip-repo", str(args.disclip_repo)] if args.disclip_repo else [])
    print(f"running {kind} on {n:,} images (load1 {os.getloadavg()[0]:.2f}) ...", flush=True)
    subprocess.run(cmd, check=True)
    z = dict(np.load(out))
    runs = json.loads(str(z.pop("runs")))
    best = min(runs, key=lambda r: r["seconds"])
    return {**z, "record": {**best, "all_seconds": [r["seconds"] for r in runs], "peak_rss_mib": float(z["peak_mib"])}}


def mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="folder with descriptions/disclip (default: ../shared/data beside the repo)")
    p.add_argument("--disclip-repo", type=Path, help="a CompVis/DisCLIP checkout (see above); omitted: visroute only")
    p.add_argument("--sizes", default="5000,50000")
    p.add_argument("--ref-sizes", default="5000", help="sizes the reference runs on (when memory allows; 50000 needs "
                   "about 15 GiB)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n-sel", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", choices=["visroute", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "visroute":
        return visroute_worker(args.workdir, args.n, args.out, args.repeat) or 0
    if args.worker == "reference":
        return reference_worker(args.workdir, args.n, args.out, args.disclip_repo) or 0
    if args.disclip_repo and not (args.disclip_repo / "method.py").is_file():
        raise SystemExit(f"{args.disclip_repo} holds no method.py: clone CompVis/DisCLIP (see --help)")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    ref_sizes = {int(s) for s in args.ref_sizes.split(",")} if args.disclip_repo else set()
    doc: dict = {"weights": WEIGHTS, "n_weights": 160, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_disclip-") as tmp:
        tmp = os.environ.get("BENCH_DISCLIP_KEEP") or tmp
        workdir = Path(tmp)
        descriptions = data_dir(args.data) / "descriptions" / "disclip" / "descriptions_ilsvrc_dclip.json"
        doc["inputs"] = make_inputs(descriptions, max(sizes), args.dim, args.n_sel, args.seed, workdir)
        C, P = doc["inputs"]["classes"], doc["inputs"]["pool"]
        first = None
        for n in sizes:
            v = run_worker("visroute", workdir, n, args)
            row = doc["sizes"][str(n)] = {"visroute": v["record"], "fallbacks": int(v["fallback"].sum())}
            if first is not None:  # the larger run on the smaller run's images (the same inputs): the same outputs
                m = first["topk"].shape[0]
                row[f"same_as_{m}_run_on_its_images"] = all(np.array_equal(v[key][..., :m] if key == "predictions"
                                                                           else v[key][:m], first[key])
                                                            for key in ("topk", "selected", "fallback", "predictions"))
            first = first or v
            need = 4.5 * n * 3 * (C + P) * 4 / 2**30 + 1.0
            if n in ref_sizes and need < mem_available_gib() - 1.5:
                r = run_worker("reference", workdir, n, args)
                same = {"topk": bool(np.array_equal(v["topk"], r["topk"])),
                        "selected_sets": bool(np.array_equal(sorted_sets(v["selected"]), sorted_sets(r["selected"]))),
                        "fallback": bool(np.array_equal(v["fallback"], r["fallback"])),
                        **prediction_agreement(v, r)}
                row.update(reference=r["record"], identical=same)
            elif n in ref_sizes:
                row["reference"] = {"skipped": f"needs about {need:.1f} GiB, {mem_available_gib():.1f} available"}
            print(json.dumps({k: row[k] for k in row if k != "visroute"} | {"visroute_s": v["record"]["seconds"]},
                             default=float), flush=True)
        measured = [int(n) for n, r in doc["sizes"].items() if "seconds" in r.get("reference", {})]
        for n, row in doc["sizes"].items():
            ref_s = row.get("reference", {}).get("seconds")
            if ref_s is None and measured:  # extrapolated linearly from the largest measured size
                base = max(measured)
                ref_s = doc["sizes"][str(base)]["reference"]["seconds"] * int(n) / base
                row["reference_extrapolated_s"] = ref_s
            row["speedup"] = ref_s / row["visroute"]["seconds"] if ref_s else None
        if len(sizes) > 1:
            a, b = (doc["sizes"][str(s)]["visroute"]["seconds"] for s in (sizes[0], sizes[-1]))
            doc["visroute_scaling"] = {"sizes": [sizes[0], sizes[-1]], "time_ratio": b / a, "size_ratio": sizes[-1] / sizes[0]}
    for n, row in doc["sizes"].items():
        print(f"{int(n):>7,} images: visroute {row['visroute']['seconds']:.3f} s (load1 {row['visroute']['load1']}), "
              f"reference {row.get('reference', {}).get('seconds', row.get('reference_extrapolated_s'))} s, "
              f"speed-up {row['speedup']}, identical {row.get('identical')}")
    write_results("bench_disclip", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
