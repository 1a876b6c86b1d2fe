"""Local vision-language generation (hf: backend) on a tiny random LLaVA with real ImageNet JPEGs."""

from __future__ import annotations

import pytest

from visroute.errors import ModelLoadError
from visroute.llm import ChatRequest, ResponseCache, load_generator


@pytest.fixture(scope="module")
def vlm(tiny_llava_dir):
    from visroute.llm.hf_vlm import HFVisionLanguageGenerator

    return HFVisionLanguageGenerator(str(tiny_llava_dir), batch_size=4, max_tokens=5)


def _requests(images):
    tench, goldfish, airedale = images[0], images[1], images[2]
    return [
        ChatRequest("What is in this image?", [tench]),
        ChatRequest("Describe the animal in this photo in a few words, please, being specific.", [goldfish],
                    system="You are a careful annotator."),
        ChatRequest("dog?", [airedale]),
    ]


def test_tiny_llava_loads_with_auto_classes(tiny_llava_dir, imagenet_images):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visroute.data.images import load_image

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    assert "<image>" in prompt and prompt.endswith("<|assistant|>\n")
    enc = processor(text=[prompt], images=[load_image(imagenet_images[0])], return_tensors="pt")
    # one <image> expands to exactly as many tokens as the vision tower yields features
    n_image_tokens = int((enc["input_ids"] == model.config.image_token_index).sum())
    assert n_image_tokens == model.config.image_seq_length == 16
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_batched_generation_matches_unbatched(vlm, imagenet_images, monkeypatch):
    assert vlm.spec.startswith("hf:")
    reqs = _requests(imagenet_images) + [ChatRequest("no picture here, just text")]
    batched = vlm.generate(reqs)
    assert all(r.ok for r in batched), [r.error for r in batched]
    for r in batched:
        assert isinstance(r.text, str)
        assert r.input_tokens > 0 and 0 < r.output_tokens <= 5
        assert r.latency_s > 0 and not r.cached
    # image requests count their 16 expanded image tokens as prompt tokens
    assert all(r.input_tokens > 16 for r in batched[:3])
    # prompts of different lengths were left-padded together; greedy results must not depend on it
    assert len({r.input_tokens for r in batched[:3]}) == 3
    monkeypatch.setattr(vlm, "batch_size", 1)
    single = vlm.generate(reqs)
    for b, s in zip(batched, single):
        assert (b.text, b.input_tokens, b.output_tokens) == (s.text, s.input_tokens, s.output_tokens)


def test_pil_images_and_paths_give_the_same_result(vlm, imagenet_images):
    from visroute.data.images import load_image

    by_path, by_pil = vlm.generate([ChatRequest("What is this?", [imagenet_images[3]]),
                                    ChatRequest("What is this?", [load_image(imagenet_images[3])])])
    assert by_path.ok and (by_path.text, by_path.input_tokens) == (by_pil.text, by_pil.input_tokens)


def test_the_image_changes_the_model_output(vlm, imagenet_images):
    import torch

    from visroute.data.images import load_image

    prompt = vlm._render(ChatRequest("What is in this image?"), n_images=1)

    def first_step_logits(path):
        enc = vlm.processor(text=[prompt], images=[load_image(path)], return_tensors="pt")
        with torch.inference_mode():
            return vlm.model(**enc).logits[0, -1]

    tench, goldfish = first_step_logits(imagenet_images[0]), first_step_logits(imagenet_images[1])
    assert torch.equal(tench, first_step_logits(imagenet_images[0]))
    assert (tench - goldfish).abs().max() > 1e-4
    # and through the generator: the same prompt with different images gives different generations
    texts = {r.text for r in vlm.generate([ChatRequest("What is in this image?", [p]) for p in imagenet_images[:4]])}
    assert len(texts) > 1


def test_repeated_request_is_served_from_the_cache(tiny_llava_dir, imagenet_images, tmp_path):
    from visroute.llm.hf_vlm import HFVisionLanguageGenerator

    cache = ResponseCache(tmp_path / "r.sqlite")
    gen = HFVisionLanguageGenerator(str(tiny_llava_dir), cache=cache, max_tokens=4)
    req = ChatRequest("What is in this image?", [imagenet_images[0]])
    first = gen.generate([req])[0]
    again = gen.generate([req])[0]
    assert first.ok and not first.cached
    assert again.cached and (again.text, again.input_tokens, again.output_tokens) == (
        first.text, first.input_tokens, first.output_tokens)
    # a different image is a different request
    assert not gen.generate([ChatRequest("What is in this image?", [imagenet_images[1]])])[0].cached
    cache.close()


def test_hf_spec_routes_vision_language_checkpoints(tiny_llava_dir):
    from visroute.llm.hf_vlm import HFVisionLanguageGenerator

    gen = load_generator(f"hf:{tiny_llava_dir}", max_tokens=2)
    assert isinstance(gen, HFVisionLanguageGenerator) and gen.max_tokens == 2


def test_unloadable_directories_raise_model_load_error(tmp_path, tiny_llama_dir):
    from visroute.llm.hf_vlm import HFVisionLanguageGenerator

    with pytest.raises(ModelLoadError):
        HFVisionLanguageGenerator(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="not a vision-language model"):
        HFVisionLanguageGenerator(str(tiny_llama_dir))
