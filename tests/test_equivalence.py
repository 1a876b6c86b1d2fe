"""Same tiny weights and images in -> same probabilities as the reference tools (to 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visroute.features import encode_image_files
from visroute.heads import ZeroShotClassifier
from visroute.models import load_model

LABELS = ["tench", "goldfish", "great white shark", "a tabby cat", "garbage truck", "volcano"]


@pytest.mark.parametrize("image_backend", ["pil", None])
@pytest.mark.parametrize("fixture", ["tiny_clip_dir", "tiny_siglip_dir", "tiny_siglip2_dir"])
def test_hf_backend_matches_transformers_pipeline(fixture, image_backend, request, imagenet_images):
    """Default (PIL image processor) and transformers' automatic choice, each against the pipeline given the same."""
    from transformers import AutoImageProcessor, pipeline

    model_dir = request.getfixturevalue(fixture)
    model = load_model(f"hf:{model_dir}", device="cpu", image_backend=image_backend)
    head = ZeroShotClassifier(model, ["a photo of a {c}."]).fit(LABELS)
    encoded = encode_image_files(model, imagenet_images, batch_size=3, num_workers=2)
    assert encoded.paths == [str(p) for p in imagenet_images]
    ours = torch.from_numpy(head.predict_proba(encoded.embeddings))

    if image_backend is None:  # the pipeline exactly as a user gets it by default
        pipe = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu")
    else:
        proc = AutoImageProcessor.from_pretrained(model_dir, backend=image_backend)
        pipe = pipeline("zero-shot-image-classification", model=str(model_dir), image_processor=proc, device="cpu")
    assert type(pipe.image_processor).__name__ == type(model.image_processor).__name__
    out = pipe([str(p) for p in imagenet_images], candidate_labels=LABELS, hypothesis_template="a photo of a {}.")
    ref = torch.tensor([[{o["label"]: o["score"] for o in row}[lab] for lab in LABELS] for row in out])

    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # the comparison must be able to fail: scores differ between classes and between images
    assert float(ref.std()) > 1e-7
    expected_rule = "softmax" if fixture == "tiny_clip_dir" else "sigmoid"
    assert model.score_rule == expected_rule


def test_cli_default_flags_match_transformers_pipeline(tiny_clip64_dir, imagenet_images, tmp_path):
    """`visroute classify` with no decode flag equals transformers' zero-shot pipeline (within 1e-4) on a 64-px
    model, where a decode shortcut would move the probabilities by about 1e-2."""
    import json

    from transformers import pipeline
    from typer.testing import CliRunner

    from visroute.cli import app

    (tmp_path / "t.txt").write_text("a photo of a {c}.\n")
    r = CliRunner().invoke(app, ["classify", *map(str, imagenet_images), "--labels", ",".join(LABELS), "--model",
                                 f"hf:{tiny_clip64_dir}", "--templates", str(tmp_path / "t.txt"), "--json",
                                 "--device", "cpu", "--top-k", str(len(LABELS))])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["decode"] == "exact"
    ours = torch.tensor([[dict(zip(p["labels"], p["scores"]))[lab] for lab in LABELS] for p in doc["predictions"]])
    pipe = pipeline("zero-shot-image-classification", model=str(tiny_clip64_dir), device="cpu")
    out = pipe([str(p) for p in imagenet_images], candidate_labels=LABELS, hypothesis_template="a photo of a {}.")
    ref = torch.tensor([[{o["label"]: o["score"] for o in row}[lab] for lab in LABELS] for row in out])
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert float(ref.std()) > 1e-6


def _openclip_reference(model_dir, image_paths, classnames, templates):
    """Zero-shot probabilities computed with open_clip's own API, the way CLIP_benchmark does."""
    import open_clip
    from PIL import Image

    name = f"local-dir:{model_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    with torch.no_grad():
        weights = []
        for c in classnames:
            emb = model.encode_text(tokenizer([t.format(c=c) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            weights.append(mean / mean.norm())
        weights = torch.stack(weights)
        images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in image_paths])
        feats = model.encode_image(images)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * feats @ weights.T
    return logits.softmax(dim=-1)


def test_openclip_backend_matches_open_clip(tiny_openclip_dir, imagenet_images):
    templates = ["a photo of a {c}.", "a blurry photo of the {c}.", "art of the {c}."]
    model = load_model(f"openclip:local-dir:{tiny_openclip_dir}", device="cpu")
    assert model.score_rule == "softmax" and not model.is_random
    head = ZeroShotClassifier(model, templates).fit(LABELS)
    ours = torch.from_numpy(head.predict_proba(encode_image_files(model, imagenet_images, num_workers=0).embeddings))
    ref = _openclip_reference(tiny_openclip_dir, imagenet_images, LABELS, templates)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert float(ref.std()) > 1e-6


def test_openclip_arch_and_checkpoint_spec(tiny_openclip_dir, imagenet_images, tmp_path):
    """openclip:<arch>/<checkpoint path> loads the same weights as the directory form."""
    import open_clip

    from tests.conftest import TINY_OPENCLIP_CFG

    cfg_file = tmp_path / "visroute-tiny-test.json"
    cfg_file.write_text(__import__("json").dumps(TINY_OPENCLIP_CFG))
    open_clip.add_model_config(cfg_file)
    ckpt = tiny_openclip_dir / "open_clip_model.safetensors"
    a = load_model(f"openclip:visroute-tiny-test/{ckpt}", device="cpu")
    b = load_model(f"openclip:local-dir:{tiny_openclip_dir}", device="cpu")
    ea = encode_image_files(a, imagenet_images[:2], num_workers=0).embeddings
    eb = encode_image_files(b, imagenet_images[:2], num_workers=0).embeddings
    torch.testing.assert_close(ea, eb)
    np.testing.assert_allclose(a.encode_texts(["a dog"]).numpy(), b.encode_texts(["a dog"]).numpy(), atol=1e-6)


def test_hf_tokenizer_built_from_open_clip_vocabulary_matches_open_clip(tiny_clip_dir):
    """The offline-built HF tokenizer gives the same ids as open_clip's tokenizer on the same BPE."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_clip_dir)
    oc = SimpleTokenizer()
    for text in ["a photo of a great white shark.", "A Garbage-Truck, parked!", "itap of a jack-o'-lantern"]:
        assert hf(text)["input_ids"] == [oc.sot_token_id] + oc.encode(text) + [oc.eot_token_id]
