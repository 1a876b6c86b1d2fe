"""Random-weight models for smoke tests and test fixtures: tiny CLIP, SigLIP, Llama and LLaVA.

They exist so that every command runs on a machine with no access to pretrained weights: the
pipeline, batching, caching and scoring are real, only the weights are random (so predictions are
at chance, and outputs say so). Building is deterministic: the same seed gives the same weights.
``load_model("random-tiny[:clip|:siglip]")`` and ``load_generator("random-tiny:llama|llava")``
build them on first use into the cache (:func:`ensure_random_tiny`); tests call the builders directly.

The tiny LLaVA (CLIP vision tower + Llama text model) holds everything the Auto classes need:
``LlavaForConditionalGeneration`` with a tiny vision tower (64x64 images, 16x16 patches -> 16 patch
tokens + CLS), a byte-level BPE tokenizer trained offline with ``<image>`` as a special token, a
``CLIPImageProcessor`` and a ``LlavaProcessor`` whose ``patch_size`` / ``num_additional_image_tokens``
/ ``vision_feature_select_strategy`` match the model, so one ``<image>`` expands to exactly as many
image tokens as the tower produces features, with a chat template that writes ``<image>`` for every
image content part. It loads with ``AutoProcessor`` and ``AutoModelForImageTextToText``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from visroute.io import cache_root, file_lock
from visroute.log import get_logger

log = get_logger(__name__)

TINY_VERSION = 1

# Text used to train the SigLIP test tokenizer; any English-ish text works.
_CORPUS = [
    "a photo of a {c}.", "a blurry photo of the {c}.", "a good photo of a small {c}.",
    "itap of a {c}.", "a rendering of a {c}.", "a sculpture of the {c}.", "art of the {c}.",
    "cat dog bird airplane automobile deer frog horse ship truck tench goldfish shark",
    "which is has a bird with a red crest, long legs, striped fur, metal wheels and wings",
    "the quick brown fox jumps over the lazy dog 0123456789",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the standard byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(directory: Path, merges: list[tuple[str, str]] | None = None,
                         context_length: int = 77) -> None:
    """Write a CLIP BPE tokenizer (vocab.json + merges.txt) and save it in transformers' format.

    With no merges this is a character-level CLIP tokenizer (514 tokens). transformers 5 builds
    an empty tokenizer from CLIPTokenizer(vocab_file=..., merges_file=...), so it is loaded from
    the directory with from_pretrained and saved back.
    """
    from transformers import CLIPTokenizer

    merges = merges or []
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        (raw_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (raw_dir / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
        )
        tok = CLIPTokenizer.from_pretrained(raw_dir, model_max_length=context_length, pad_token="<|endoftext|>")
        tok.save_pretrained(directory)


def write_sentencepiece_tokenizer(directory: Path, vocab_size: int = 128) -> None:
    """Train a tiny sentencepiece model on a fixed corpus and save a SigLIP tokenizer around it."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    with tempfile.TemporaryDirectory() as raw:
        corpus = Path(raw) / "corpus.txt"
        corpus.write_text("\n".join(_CORPUS * 4), encoding="utf-8")
        prefix = str(Path(raw) / "spiece")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, num_threads=1, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            hard_vocab_limit=False, minloglevel=2,
        )
        tok = SiglipTokenizer(vocab_file=prefix + ".model", model_max_length=64)
        tok.save_pretrained(directory)


def tiny_clip_config(vocab_size: int, hidden: int = 32, layers: int = 2, image_size: int = 224,
                     patch_size: int = 32, projection_dim: int = 32):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )


def build_tiny_clip(directory: Path, seed: int = 0, **config_kw) -> Path:
    """Save a random tiny CLIP (model, image processor, char-level CLIP tokenizer) into ``directory``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(directory)
    vocab_size = len(CLIPTokenizer.from_pretrained(directory))
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab_size, **config_kw))
    model.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def build_tiny_siglip(directory: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a random tiny SigLIP (model, image processor, sentencepiece tokenizer) into ``directory``."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_sentencepiece_tokenizer(directory)
    vocab_size = len(SiglipTokenizer.from_pretrained(directory))
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64,
                         projection_size=hidden, pad_token_id=0, eos_token_id=1, bos_token_id=1),
        vision_config=dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=224, patch_size=32),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    model.save_pretrained(directory)
    SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}{% else %}<image>{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_bpe_tokenizer(directory: Path, vocab_size: int = 300, extra_special: tuple[str, ...] = ()) -> None:
    """Train a small byte-level BPE tokenizer with `tokenizers` and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", *extra_special]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 8, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=list(specials[4:]))
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def build_tiny_llama(directory: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a random tiny Llama causal LM with a locally trained tokenizer and a chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_bpe_tokenizer(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


IMAGE_TOKEN = "<image>"

# Like CHAT_TEMPLATE, with explicit newlines (transformers renders templates with trim_blocks, which eats
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


def ensure_random_tiny(variant: str) -> Path:
    """Build (once) and return the cached directory of the random-tiny model ``variant``.

    Variants: clip, siglip, llama (a causal LM) and llava (a generative VLM). Concurrent callers
    wait on one lock; the build happens in a temporary directory renamed into place, so a killed
    build never leaves a half-written model behind.
    """
    builders = {"clip": build_tiny_clip, "siglip": build_tiny_siglip, "llama": build_tiny_llama,
                "llava": build_tiny_llava}
    if variant not in builders:
        raise ValueError(f"unknown random-tiny variant {variant!r}; use one of {', '.join(builders)}")
    target = cache_root() / "models" / f"random-tiny-{variant}-v{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    with file_lock(cache_root() / "locks" / f"{target.name}.lock",
                   on_wait=lambda: log.info("waiting for another process building %s", target.name)):
        if (target / "config.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            builders[variant](tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    log.info("built the random-weight smoke-test model %s", target)
    return target
