"""Routing records whose structure is known, for tests and benchmarks: recognition tasks succeed with CLIP,
reading text with a VLM, reasoning with VLM + LLM, over real-sounding task texts. The product never imports it."""

from __future__ import annotations

import numpy as np

MODELS = ["clip", "vlm", "vlm+llm"]
COSTS = np.array([0.0001, 0.002, 0.01])
# success rate per task type and model: recognition -> CLIP, reading text -> VLM, reasoning -> VLM + LLM
RATES = {"recognition": [0.95, 0.6, 0.7], "ocr": [0.1, 0.9, 0.6], "reasoning": [0.05, 0.4, 0.92]}
QUESTIONS = {
    "recognition": ["What is shown in this image?", "Which object appears in the photo?", "What kind of animal is this?",
                    "Identify the main object in the picture.", "Which category does this photo belong to?"],
    "ocr": ["What is written on the sign?", "Which brand name is printed on the bottle?", "What number is on the jersey?",
            "What does the text on the storefront say?", "Read the title of the book on the table."],
    "reasoning": ["Which of these animals is best adapted to a cold climate, judging from the picture?",
                  "Based on the image, which force moves the object?", "Which property do these objects have in common?",
                  "Given the weather shown, what should the person wear?", "Why is the ice in the picture melting?"],
}
OPTIONS = {"recognition": ["dog", "cat", "goldfish", "truck", "banana", "volcano", "tabby cat", "soccer ball"],
           "ocr": ["STOP", "Coca-Cola", "23", "OPEN", "Harry Potter", "EXIT", "Main St."],
           "reasoning": ["polar bear", "gravity", "magnetism", "hard", "a warm coat", "the sun heats it", "sticky"]}
DATASETS = {"recognition": ["imagenet", "pets"], "ocr": ["textvqa"], "reasoning": ["scienceqa"]}


def make_records(n=600, seed=0):
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(RATES), size=n)
    texts, succ = [], np.zeros((n, 3), np.float32)
    for i, k in enumerate(kinds):
        q = rng.choice(QUESTIONS[k])
        opts = rng.choice(OPTIONS[k], size=3, replace=False)
        texts.append(f"{q} Options: {'; '.join(opts)}. Dataset: {rng.choice(DATASETS[k])}")
        u = rng.random()  # one difficulty per task: correlated outcomes, so the oracle is the best model per type
        succ[i] = (u < np.array(RATES[k])).astype(np.float32)
    cost = np.tile(COSTS, (n, 1)).astype(np.float32)
    return texts, succ, cost, kinds
