"""Model specs, loading errors, the uniform encode/score interface."""

from __future__ import annotations

import builtins

import pytest
import torch

from visroute.errors import MissingExtraError, ModelLoadError
from visroute.models import load_model, parse_model_spec
from visroute.models.spec import ModelSpec


def test_parse_spec_forms(tiny_clip_dir, tiny_openclip_dir):
    assert parse_model_spec("hf:openai/clip-vit-base-patch32") == ModelSpec("hf", "openai/clip-vit-base-patch32")
    assert parse_model_spec("clip-vit-b-32") == ModelSpec("hf", "openai/clip-vit-base-patch32")
    assert parse_model_spec("openclip:ViT-B-32/laion2b_s34b_b79k") == ModelSpec("openclip", "ViT-B-32", "laion2b_s34b_b79k")
    assert parse_model_spec("openclip:ViT-B-32//ckpt/model.pt") == ModelSpec("openclip", "ViT-B-32", "/ckpt/model.pt")
    assert parse_model_spec("openclip:hf-hub:timm/ViT-B-16-SigLIP") == ModelSpec("openclip", "hf-hub:timm/ViT-B-16-SigLIP")
    assert parse_model_spec("random-tiny") == ModelSpec("random-tiny", "clip")
    # a bare local directory is detected by what it holds
    assert parse_model_spec(str(tiny_clip_dir)) == ModelSpec("hf", str(tiny_clip_dir))
    assert parse_model_spec(str(tiny_openclip_dir)) == ModelSpec("openclip", f"local-dir:{tiny_openclip_dir}")
    assert parse_model_spec("openclip:ViT-B-32/openai").text == "openclip:ViT-B-32/openai"


@pytest.mark.parametrize("bad", ["", "nonsense-model-name", "hf:", "random-tiny:vit"])
def test_bad_specs_name_the_accepted_forms(bad):
    with pytest.raises(ModelLoadError) as e:
        parse_model_spec(bad)
    assert "\n" not in str(e.value)


def test_unreachable_hub_model_gives_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        load_model("hf:visroute-test/does-not-exist", device="cpu")
    msg = str(e.value)
    assert "visroute-test/does-not-exist" in msg and "HF_HUB_OFFLINE" in msg and "hf:/path/to/model_dir" in msg


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="local directory"):
        load_model(f"hf:{tmp_path}", device="cpu")


def test_missing_openclip_extra_is_reported(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingExtraError, match=r"visroute\[openclip\]"):
        load_model("openclip:ViT-B-32/openai", device="cpu")


def test_unknown_openclip_tag_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="open_clip"):
        load_model("openclip:ViT-B-32/no-such-tag", device="cpu")


def test_device_and_dtype_rules(tiny_clip_dir):
    with pytest.raises(ModelLoadError, match="fp16 is not supported on the CPU"):
        load_model(f"hf:{tiny_clip_dir}", device="cpu", dtype="fp16")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(f"hf:{tiny_clip_dir}", device="cpu", dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_model(f"hf:{tiny_clip_dir}", device="cuda")
    m = load_model(f"hf:{tiny_clip_dir}", device="cpu", dtype="bf16")
    assert m.dtype == torch.bfloat16
    emb = m.encode_texts(["a photo of a cat"])
    assert emb.dtype == torch.float32 and torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-4)


def test_encoders_are_normalised_batched_and_match_the_model(tiny_clip_dir, imagenet_images):
    from PIL import Image

    m = load_model(f"hf:{tiny_clip_dir}", device="cpu")
    texts = [f"a photo of a {w}" for w in ["cat", "dog", "jack-o'-lantern", "garbage truck", "tench"]]
    all_at_once = m.encode_texts(texts, batch_size=1024)
    one_by_one = torch.cat([m.encode_texts([t], batch_size=1) for t in texts])
    torch.testing.assert_close(all_at_once, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(all_at_once.norm(dim=-1), torch.ones(len(texts)))
    # identical to the embeddings CLIPModel.forward itself produces
    images = [Image.open(p).convert("RGB") for p in imagenet_images[:3]]
    inputs = m.image_processor(images=images, return_tensors="pt")
    tok = m.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = m.model(pixel_values=inputs["pixel_values"], **tok)
    torch.testing.assert_close(m.encode_images(images), torch.nn.functional.normalize(out.image_embeds, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(all_at_once, torch.nn.functional.normalize(out.text_embeds, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.logits(m.encode_images(images), all_at_once), out.logits_per_image, atol=1e-4, rtol=0)


def test_long_prompts_are_truncated_not_fatal(tiny_clip_dir, tiny_siglip_dir):
    long = "a photo of " + "a very " * 300 + "long cat"
    for d in (tiny_clip_dir, tiny_siglip_dir):
        m = load_model(f"hf:{d}", device="cpu")
        emb = m.encode_texts([long, "short"])
        assert emb.shape[0] == 2 and torch.isfinite(emb).all()


def test_siglip_scoring_uses_bias_and_sigmoid(tiny_siglip_dir):
    m = load_model(f"hf:{tiny_siglip_dir}", device="cpu")
    with torch.no_grad():
        m.model.logit_bias.fill_(-3.0)
        m.model.logit_scale.fill_(2.0)
    m2 = type(m)(m.model, m.image_processor, m.tokenizer, m.spec, m.device, m.dtype)
    assert m2.logit_bias == pytest.approx(-3.0) and m2.logit_scale == pytest.approx(torch.e**2, rel=1e-5)
    img = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    expected = torch.sigmoid(img @ txt.T * torch.e**2 - 3.0)
    torch.testing.assert_close(m2.probabilities(m2.logits(img, txt)), expected, atol=1e-5, rtol=0)


def test_random_tiny_is_built_once_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "a"))
    a = load_model("random-tiny", device="cpu")
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "b"))
    b = load_model("random-tiny", device="cpu")
    assert a.is_random and b.is_random
    torch.testing.assert_close(a.encode_texts(["a cat"]), b.encode_texts(["a cat"]))
    assert len(list((tmp_path / "a" / "models").iterdir())) == 1
