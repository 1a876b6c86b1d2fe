"""Synthetic routing records for ``bench_router.py``: ten VQA-style datasets (question templates with one slot,
option vocabularies), seven models from CLIP to GPT-4o with per-call costs over four orders of magnitude, and
success drawn from (dataset type, model), the prompt variant, a per-text difficulty and noise. Written in
visroute's records schema, so the benchmark reads them as a user's grid would be read."""

from __future__ import annotations

import os

import numpy as np

# (name, type, question templates with one {slot}, slot vocabulary, option vocabulary)
DATASETS = [
    ("cub-birds", "fine-grained", ["Which bird species is shown in this {s} photo?", "What kind of bird is perched on the {s}?",
                                   "Identify the bird species in the {s} image."],
     ["close-up", "field", "branch", "water", "feeder", "winter"],
     ["American crow", "Blue jay", "Cardinal", "Cedar waxwing", "Common yellowthroat", "Indigo bunting",
      "Painted bunting", "Red-winged blackbird", "Rufous hummingbird", "Scarlet tanager"]),
    ("stanford-cars", "fine-grained", ["Which car model is this {s}?", "What is the make and model of the {s} car?",
                                       "Identify the {s} vehicle."],
     ["sedan", "coupe", "convertible", "SUV", "hatchback", "pickup"],
     ["Audi A4 2012", "BMW M3 2011", "Chevrolet Camaro 2012", "Dodge Charger 2012", "Ford Mustang 2010",
      "Honda Accord 2012", "Hyundai Sonata 2012", "Tesla Model S 2012", "Toyota Camry 2012", "Volvo XC90 2007"]),
    ("textvqa", "ocr", ["What does the text on the {s} say?", "What word is written on the {s}?",
                        "What is the brand name shown on the {s}?"],
     ["sign", "bottle", "shirt", "storefront", "bus", "book cover", "poster"],
     ["stop", "exit", "coffee", "open", "sale", "pepsi", "nike", "welcome", "police", "hotel"]),
    ("chartqa", "chart", ["What is the value of the {s} bar in the chart?", "Which category has the highest {s}?",
                          "By how much did the {s} change between the first and last year?"],
     ["revenue", "population", "share", "growth", "profit", "temperature"],
     ["12", "15", "18", "21", "24", "30", "35", "42", "50", "64"]),
    ("clevr-count", "counting", ["How many {s} objects are there?", "How many {s} cubes are in the scene?",
                                 "Count the {s} spheres."],
     ["red", "blue", "green", "yellow", "metal", "rubber", "large", "small"],
     ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
    ("vsr-spatial", "spatial", ["Where is the {s} relative to the table?", "What is the position of the {s} in the image?",
                                "Which side of the person is the {s} on?"],
     ["cat", "dog", "cup", "laptop", "chair", "umbrella", "bicycle"],
     ["left", "right", "above", "below", "in front", "behind", "on top", "under", "next to", "inside"]),
    ("imagenet-sample", "general", ["What is shown in this {s} image?", "What is the main object in the {s} photo?",
                                    "Which object category best describes this {s} picture?"],
     ["outdoor", "indoor", "blurry", "bright", "dark", "cropped"],
     ["golden retriever", "tabby cat", "goldfish", "school bus", "espresso", "mountain bike", "pizza",
      "red wine", "sea lion", "volcano"]),
    ("vqav2", "general", ["What color is the {s}?", "What is the {s} made of?", "What is the person holding near the {s}?"],
     ["car", "shirt", "wall", "umbrella", "kite", "plate", "bench"],
     ["red", "blue", "white", "black", "green", "wood", "metal", "plastic", "phone", "frisbee"]),
    ("docvqa", "ocr", ["What is the {s} on the document?", "Which {s} is written in the header?",
                       "What {s} appears at the bottom of the page?"],
     ["date", "total amount", "invoice number", "company name", "signature name", "address"],
     ["March 3, 1998", "$1,250.00", "INV-2041", "Acme Corp.", "J. Smith", "12 Main St.", "R&D Division",
      "Confidential", "Page 2", "Fax 555-0199"]),
    ("scienceqa", "reasoning", ["Which of these {s} is the best answer?", "Based on the {s} shown, which option is correct?",
                                "Which statement about the {s} is true?"],
     ["food web", "magnet diagram", "map", "circuit", "weather chart", "life cycle"],
     ["the force is attraction", "the force is repulsion", "it is a solid", "it is a liquid", "it is a gas",
      "Ohio", "Texas", "the producer", "the consumer", "the decomposer"]),
]
TYPES = ["fine-grained", "ocr", "chart", "counting", "spatial", "general", "reasoning"]

# (name, cost per call in $, logit by dataset type in TYPES order)
MODELS = [
    ("clip-vit-b32", 2e-6, [0.8, -2.0, -2.2, -1.5, -1.2, 1.2, -1.0]),
    ("clip-vit-l14", 1.2e-5, [1.3, -1.4, -2.0, -1.3, -1.0, 1.6, -0.8]),
    ("smolvlm-256m", 8e-5, [-0.8, -0.5, -0.8, -0.3, -0.2, 0.3, -0.4]),
    ("qwen2-vl-2b", 3e-4, [-0.2, 0.9, 0.3, 0.4, 0.3, 0.9, 0.4]),
    ("llava-1.6-7b", 1.5e-3, [0.2, 0.7, 0.2, 0.6, 0.6, 1.3, 0.7]),
    ("qwen2-vl-2b+llama-3-8b", 4e-3, [0.0, 1.0, 0.9, 0.5, 0.7, 1.1, 1.3]),
    ("gpt-4o", 1.2e-2, [1.2, 2.0, 1.8, 1.2, 1.4, 2.2, 2.0]),
]


def model_table(n_models: int):
    if n_models <= len(MODELS):
        return MODELS[:n_models]
    rng = np.random.default_rng(123)
    extra = [(f"extra-vlm-{i}", float(10 ** rng.uniform(-5, -2)), list(rng.normal(0, 1, len(TYPES))))
             for i in range(n_models - len(MODELS))]
    return MODELS + extra


def generate_records(path: str, rows: int, n_models: int, n_datasets: int, n_prompts: int, n_star: int, seed: int,
                     option_vocab: int = 8):
    """Write the records Parquet; return a dict of facts about it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visroute.router.data.records import records_schema
    from visroute.tasks.model import task_text

    rng = np.random.default_rng(seed)
    models = model_table(n_models)
    n_star = min(n_star, n_models)
    datasets = [DATASETS[i % len(DATASETS)] for i in range(n_datasets)]
    ds_names = [d[0] if i < len(DATASETS) else f"{d[0]}-{i // len(DATASETS)}" for i, d in enumerate(datasets)]
    per_sample = n_datasets * (n_prompts * (n_models - n_star) + n_star)
    S = max(1, int(round(rows / per_sample)))
    prompts = [f"p{i}" for i in range(n_prompts)]

    # ---- per-sample texts (python strings: D x S of them), then a global text dictionary
    text_index: dict[str, int] = {}
    texts: list[str] = []
    sample_text = np.empty((n_datasets, S), np.int64)
    tpl_of = np.empty((n_datasets, S), np.int64)
    slot_of = np.empty((n_datasets, S), np.int64)
    for di, (_, _, templates, slots, opts) in enumerate(datasets):
        opts = opts[: max(4, option_vocab)]
        tpl = rng.integers(0, len(templates), S)
        slot = rng.integers(0, len(slots), S)
        tpl_of[di], slot_of[di] = tpl, slot
        # 4 options out of the first option_vocab words, listed in vocabulary order (C(option_vocab, 4) sets)
        keys = rng.random((S, len(opts)))
        chosen = np.sort(np.argsort(keys, axis=1)[:, :4], axis=1)
        for si in range(S):
            q = templates[tpl[si]].format(s=slots[slot[si]])
            t = task_text(q, [opts[j] for j in chosen[si]]) + f" Dataset: {ds_names[di]}"
            k = text_index.get(t)
            if k is None:
                k = text_index[t] = len(texts)
                texts.append(t)
            sample_text[di, si] = k
    U = len(texts)
    # latent difficulty of a text (what a router can learn): its question template and slot word, plus a
    # per-text part (the option set)
    tpl_eff, slot_eff = rng.normal(0.0, 0.8, (n_datasets, 3)), rng.normal(0.0, 0.6, (n_datasets, 8))
    difficulty = rng.normal(0.0, 0.4, U)
    text_tpl = np.zeros(U, np.int64)
    text_slot = np.zeros(U, np.int64)
    text_ds = np.zeros(U, np.int64)
    for di in range(n_datasets):
        text_tpl[sample_text[di]], text_slot[sample_text[di]], text_ds[sample_text[di]] = tpl_of[di], slot_of[di], di
    difficulty += tpl_eff[text_ds, text_tpl] + slot_eff[text_ds, text_slot]
    sample_noise = rng.normal(0.0, 0.5, (n_datasets, S))  # per-image difficulty, invisible to the router
    sens = rng.uniform(0.4, 1.2, n_models)          # how much each model suffers from hard texts
    prompt_eff = rng.normal(0.0, 0.3, (n_datasets, n_prompts, n_models))
    type_idx = [TYPES.index(d[1]) for d in datasets]
    base = np.array([[m[2][type_idx[di]] for m in models] for di in range(n_datasets)])  # (D, M)
    # a per-(dataset, model) offset on top of the type, so datasets of one type still differ
    base = base + rng.normal(0.0, 0.3, base.shape)

    # ---- record index arrays
    parts = []
    for mi in range(n_models):
        star = mi < n_star
        P = 1 if star else n_prompts
        d, p, s = np.meshgrid(np.arange(n_datasets), np.arange(P), np.arange(S), indexing="ij")
        d, p, s = d.ravel(), p.ravel(), s.ravel()
        parts.append((mi, star, d, p, s))
    n = sum(len(x[2]) for x in parts)
    dcode = np.concatenate([x[2] for x in parts]).astype(np.int32)
    scode = np.concatenate([x[4] for x in parts]).astype(np.int64)
    mcode = np.concatenate([np.full(len(x[2]), x[0], np.int32) for x in parts])
    pcode = np.concatenate([np.full(len(x[2]), n_prompts, np.int32) if x[1] else x[3].astype(np.int32)
                            for x in parts])  # n_prompts = "*"
    tcode = sample_text[dcode, scode]
    peff = np.where(pcode < n_prompts, prompt_eff[dcode, np.minimum(pcode, n_prompts - 1), mcode], 0.0)
    logit = base[dcode, mcode] + peff - sens[mcode] * (difficulty[tcode] + sample_noise[dcode, scode]) \
        + rng.normal(0.0, 0.3, n)
    prob = 1.0 / (1.0 + np.exp(-logit))
    correct = rng.random(n) < prob
    score = np.clip(prob + rng.normal(0, 0.1, n), 0, 1).astype(np.float32)
    unit = np.array([m[1] for m in models])
    cost = unit[mcode] * rng.lognormal(0.0, 0.25, n)
    latency = np.array([0.004, 0.01, 0.15, 0.4, 1.2, 2.5, 1.8])[np.minimum(mcode, 6)] * rng.lognormal(0, 0.3, n)

    # ---- strings via dictionary arrays, cast to the schema's plain strings
    gid = dcode.astype(np.int64) * S + scode  # global sample id
    task_ids = [f"{ds_names[di]}/{si:06d}" for di in range(n_datasets) for si in range(S)]
    image_ids = [f"{ds_names[di]}/images/{si:06d}.jpg" for di in range(n_datasets) for si in range(S)]

    def dict_col(codes, values):
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string())
                                              ).cast(pa.string())

    cols = {
        "task_id": dict_col(gid, task_ids),
        "dataset": dict_col(dcode, ds_names),
        "prompt_variant": dict_col(pcode, prompts + ["*"]),
        "task_text": dict_col(tcode, texts),
        "image_id": dict_col(gid, image_ids),
        "image_path": dict_col(gid, [f"/data/{i}" for i in image_ids]),
        "model": dict_col(mcode, [m[0] for m in models]),
        "correct": pa.array(correct),
        "score": pa.array(score, pa.float32()),
        "cost": pa.array(cost, pa.float64()),
        "latency_s": pa.array(latency, pa.float64()),
        "dataset_spec": dict_col(dcode, [f"synthetic:{n}" for n in ds_names]),
        "pipeline": pa.nulls(n, pa.string()),
        "status": dict_col(np.zeros(n, np.int32), ["ok"]),  # every synthetic call answered
        "error": pa.nulls(n, pa.string()),
    }
    table = pa.table(cols, schema=records_schema())
    pq.write_table(table, path)
    return {"rows": n, "samples_per_dataset": S, "unique_texts_generated": U, "models": [m[0] for m in models],
            "star_models": [m[0] for m in models[:n_star]], "file_mib": os.path.getsize(path) / 2**20,
            "text_chars_mean": float(np.mean([len(t) for t in texts]))}
