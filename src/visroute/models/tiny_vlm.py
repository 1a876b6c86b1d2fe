"""A tiny randomly initialised LLaVA (CLIP vision tower + Llama text model), built locally.

Like the tiny CLIP / SigLIP / Llama builders in :mod:`visroute.models.tiny`, it exists so that the
image+text generation path (``hf:`` vision-language models and ``transformers serve``) runs end to
end on a machine with no pretrained weights. The directory holds everything the Auto classes need:

* ``config.json`` / ``model.safetensors``: ``LlavaForConditionalGeneration`` with a tiny
  ``CLIPVisionConfig`` (64x64 images, 16x16 patches -> 16 patch tokens + CLS) and a tiny ``LlamaConfig``;
* a byte-level BPE tokenizer trained offline with ``tokenizers``, with ``<image>`` as a special token;
* ``CLIPImageProcessor`` (resize shortest edge to 64, centre crop 64x64);
* ``LlavaProcessor`` whose ``patch_size`` / ``num_additional_image_tokens`` /
  ``vision_feature_select_strategy`` match the model, so one ``<image>`` in the prompt expands to
  exactly as many image tokens as the vision tower produces features (16), and a chat template
  that writes ``<image>`` for every image content part (``{"type": "image"}``, ``"image_url"``, ...).

It loads with ``AutoProcessor.from_pretrained(dir)`` and ``AutoModelForImageTextToText.from_pretrained(dir)``.
Building is deterministic: the same seed gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

from visroute.models.tiny import write_bpe_tokenizer

IMAGE_TOKEN = "<image>"

# Like tiny.CHAT_TEMPLATE, with explicit newlines (transformers renders templates with trim_blocks, which eats
# a newline written right after a block tag) and one "<image>\n" per image content part, whatever its spelling:
# {"type": "image"} (processors), "image_url" (OpenAI) or "input_image" (Responses API).
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}"
    "{% elif p['type'] in ['image', 'image_url', 'input_image'] %}<image>{{ '\\n' }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
)


def build_tiny_llava(directory: Path, seed: int = 0, hidden: int = 32, layers: int = 2, image_size: int = 64,
                     patch_size: int = 16) -> Path:
    """Save a random tiny LLaVA (model, tokenizer, image processor, processor with chat template) into ``directory``."""
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, GenerationConfig, LlamaConfig,
                              LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_bpe_tokenizer(directory, extra_special=(IMAGE_TOKEN,))
    tok = AutoTokenizer.from_pretrained(directory)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)

    strategy = "default"  # drop the CLS feature: (image_size / patch_size)^2 image tokens
    num_patches = (image_size // patch_size) ** 2
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=hidden)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         image_seq_length=num_patches, vision_feature_select_strategy=strategy,
                         vision_feature_layer=-1, projector_hidden_act="gelu")
    config.pad_token_id = tok.pad_token_id
    config.bos_token_id = tok.bos_token_id
    config.eos_token_id = tok.eos_token_id

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id)
    model.save_pretrained(directory)

    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                               vision_feature_select_strategy=strategy, chat_template=LLAVA_CHAT_TEMPLATE,
                               image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
    processor.save_pretrained(directory)
    return directory
