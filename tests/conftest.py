"""Shared fixtures: real images from ../shared/data and tiny random models built through the real loaders."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VISROUTE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep visroute's cache (random-tiny builds, features) inside the test session."""
    os.environ["VISROUTE_CACHE"] = str(tmp_path_factory.mktemp("visroute-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "imagenet-sample" / "labels.csv").is_file():
        pytest.fail(f"shared data not found at {SHARED} (set VISROUTE_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def imagenet_images(shared_data) -> list[Path]:
    """A fixed handful of real ImageNet JPEGs, grayscale ones included."""
    names = ["n01440764_tench", "n01443537_goldfish", "n02096051_Airedale", "n02123045_tabby",
             "n03417042_garbage_truck", "n04254680_soccer_ball", "n07753592_banana", "n09472597_volcano"]
    return [shared_data / "imagenet-sample" / f"{n}.JPEG" for n in names]


def clip_bpe_merges() -> list[tuple[str, str]]:
    """The real CLIP BPE merges, read from the vocabulary file open_clip's wheel ships."""
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """Tiny random transformers CLIP with the real CLIP BPE tokenizer, saved with save_pretrained."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from visroute.models.tiny import tiny_clip_config, write_clip_tokenizer

    d = tmp_path_factory.mktemp("tiny-clip")
    write_clip_tokenizer(d, merges=clip_bpe_merges())
    vocab = len(CLIPTokenizer.from_pretrained(d))
    torch.manual_seed(1)
    CLIPModel(tiny_clip_config(vocab)).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_clip64_dir(tmp_path_factory) -> Path:
    """A tiny CLIP with a 64-px input, never seen by any test tool: ImageNet photos are shrunk a lot, so a decode
    shortcut shows in the probabilities."""
    from transformers import CLIPImageProcessor

    from visroute.models.tiny import build_tiny_clip

    d = build_tiny_clip(tmp_path_factory.mktemp("clip64"), seed=11, image_size=64, patch_size=16)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    from visroute.models.tiny import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"), seed=2)


@pytest.fixture(scope="session")
def tiny_siglip2_dir(tmp_path_factory) -> Path:
    """Tiny random SigLIP2 (NaFlex image processor: patches + attention mask + spatial shapes)."""
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, SiglipTokenizer

    from visroute.models.tiny import write_sentencepiece_tokenizer

    d = tmp_path_factory.mktemp("tiny-siglip2")
    write_sentencepiece_tokenizer(d)
    vocab = len(SiglipTokenizer.from_pretrained(d))
    cfg = Siglip2Config(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, projection_size=32,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=16, num_patches=64),
    )
    torch.manual_seed(3)
    Siglip2Model(cfg).save_pretrained(d)
    Siglip2ImageProcessor(patch_size=16, max_num_patches=64).save_pretrained(d)
    return d


TINY_OPENCLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_openclip_dir(tmp_path_factory) -> Path:
    """Tiny random open_clip model saved as an open_clip local directory (config + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny-openclip")
    cfg = {"model_cfg": TINY_OPENCLIP_CFG, "preprocess_cfg": {}}
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(4)
    model = open_clip.create_model("local-dir:" + str(d))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from visroute.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    from visroute.models.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


def _serve(model_dir: Path, tmp_path_factory):
    """Start `transformers serve` (a real OpenAI-compatible server) on loopback around ``model_dir``."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    hub = tmp_path_factory.mktemp("hf-hub")
    exe = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)}
    log = open(tmp_path_factory.mktemp("serve-log") / "serve.log", "w")
    proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("transformers serve did not start within 180 s")
    return proc, log, f"{base}/v1"


def _stop(proc, log):
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def transformers_server(tiny_llama_dir, tmp_path_factory):
    """`transformers serve` around the tiny random Llama: (base_url, model name)."""
    proc, log, url = _serve(tiny_llama_dir, tmp_path_factory)
    yield url, str(tiny_llama_dir)
    _stop(proc, log)


@pytest.fixture(scope="session")
def llava_server(tiny_llava_dir, tmp_path_factory):
    """`transformers serve` around the tiny random LLaVA (image inputs are used): (base_url, model name)."""
    proc, log, url = _serve(tiny_llava_dir, tmp_path_factory)
    yield url, str(tiny_llava_dir)
    _stop(proc, log)


@pytest.fixture
def restore_visroute_logger():
    """The `visroute` logger as it was before the test (configure_logging replaces its handler)."""
    logger = logging.getLogger("visroute")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield logger
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]
