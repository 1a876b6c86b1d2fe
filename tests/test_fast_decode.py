"""uint8 transport and fast decode: the exact split reproduces each model's preprocessing bit for bit, and fast
decode (``decode: fast``, opt-in; ``exact`` is the default everywhere) leaves predictions and accuracy on the shared samples unchanged."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch

from visroute.data.batches import iter_preprocessed_batches
from visroute.data.images import load_image
from visroute.data.pixels import pixel_plan
from visroute.features import encode_image_files
from visroute.heads import ZeroShotClassifier
from visroute.models import load_model


@pytest.fixture(scope="module")
def imagenet_sample(shared_data):
    rows = list(csv.DictReader(open(shared_data / "imagenet-sample" / "labels.csv", encoding="utf-8")))
    return [shared_data / "imagenet-sample" / r["file"] for r in rows], [r["classname"] for r in rows]


@pytest.fixture(scope="module")
def openclip_tiny(tmp_path_factory):
    import json

    import open_clip
    from safetensors.torch import save_file

    from tests.conftest import TINY_OPENCLIP_CFG

    d = tmp_path_factory.mktemp("fast-openclip")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPENCLIP_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(5)
    model = open_clip.create_model("local-dir:" + str(d))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return f"openclip:local-dir:{d}"


def _specs(request, openclip_tiny):
    clip, siglip = request.getfixturevalue("tiny_clip_dir"), request.getfixturevalue("tiny_siglip_dir")
    return [(f"hf:{clip}", "pil"), (f"hf:{clip}", None), (f"hf:{siglip}", "pil"), (f"hf:{siglip}", None),
            (openclip_tiny, None)]


def test_uint8_split_is_bit_exact_for_every_backend(request, openclip_tiny, imagenet_images, shared_data):
    """Worker uint8 pixels + the destination's lookup table == the model's own float preprocessing, exactly."""
    cifar = sorted((shared_data / "cifar10-test" / "cat").iterdir())[:3]
    for spec, backend in _specs(request, openclip_tiny):
        kw = {"image_backend": backend} if spec.startswith("hf:") else {}
        model = load_model(spec, device="cpu", **kw)
        plan = pixel_plan(model.preprocess)
        assert plan is not None, spec
        for path in [*imagenet_images, *cifar]:
            image = load_image(path)
            u8 = plan.pixels(image)
            assert u8.dtype == torch.uint8
            got = plan.finish(u8[None])["pixel_values"][0]
            assert torch.equal(got, model.preprocess(image)["pixel_values"]), (spec, backend, path.name)
            fast = plan.finish(plan.pixels(image, fast=True)[None])["pixel_values"][0]
            assert fast.shape == got.shape
            if min(image.size) <= 224:  # nothing to shrink: fast decode leaves the pixels alone
                assert torch.equal(fast, got)


def test_naflex_processor_keeps_the_float_path(tiny_siglip2_dir, imagenet_images):
    """A processor with extra outputs (patch masks, shapes) gets no plan; its batches still encode."""
    model = load_model(f"hf:{tiny_siglip2_dir}", device="cpu")
    assert pixel_plan(model.preprocess) is None
    enc = encode_image_files(model, imagenet_images[:3], num_workers=0, decode="fast")
    assert enc.embeddings.shape[0] == 3


def test_fast_decode_keeps_predictions_and_accuracy(tiny_clip_dir, openclip_tiny, imagenet_sample, shared_data):
    """ImageNet sample (most images larger than 224 px: the fast path) and CIFAR (32 px: the exact path)."""
    paths, names = imagenet_sample
    paths, names = paths[:500], names[:500]
    cifar_dir = shared_data / "cifar10-test"
    classes = sorted(p.name for p in cifar_dir.iterdir())
    cifar = [(f, i) for i, c in enumerate(classes) for f in sorted((cifar_dir / c).iterdir())[:20]]
    for spec in (f"hf:{tiny_clip_dir}", openclip_tiny):
        model = load_model(spec, device="cpu")
        for files, labels, classnames in ((paths, np.arange(len(paths)), list(dict.fromkeys(names))),
                                          ([f for f, _ in cifar], np.array([i for _, i in cifar]), classes)):
            y = np.array([classnames.index(names[i]) for i in labels]) if classnames is not classes else labels
            head = ZeroShotClassifier(model, ["a photo of a {c}."]).fit(classnames)
            exact = head.predict(encode_image_files(model, files, num_workers=2).embeddings)
            fast = head.predict(encode_image_files(model, files, num_workers=2, decode="fast").embeddings)
            assert (exact == fast).mean() >= 0.99, spec
            assert abs((exact == y).mean() - (fast == y).mean()) <= 0.005, spec
            if classnames is classes:
                assert (exact == fast).all()  # 32-px images never take the fast kernel


def test_worker_batches_keep_order_and_skips(tiny_clip_dir, imagenet_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    model = load_model(f"hf:{tiny_clip_dir}", device="cpu")
    files = [*imagenet_images[:3], bad, *imagenet_images[3:]]
    seen, skipped = [], []
    for idx, batch, skip in iter_preprocessed_batches(files, model.preprocess, model.collate, batch_size=3,
                                                      num_workers=2):
        seen += idx
        skipped += [s.index for s in skip]
        if idx:
            assert batch["pixel_values"].shape == (len(idx), 3, 224, 224)
            assert batch["pixel_values"].dtype == torch.float32
    assert seen == [0, 1, 2, 4, 5, 6, 7, 8] and skipped == [3]


def test_thread_choice_is_logged(tiny_clip_dir, imagenet_images):
    """What ``--verbose`` shows: workers, their torch threads, the main process's threads."""
    import visroute.data.batches as images

    model = load_model(f"hf:{tiny_clip_dir}", device="cpu")
    images._LOGGED_THREADS.clear()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("visroute")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        encode_image_files(model, imagenet_images * 9, batch_size=8, num_workers=2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("threads:")]
    assert lines and "2 decoding worker process(es) with 1 torch thread each" in lines[0]
    assert torch.get_num_threads() <= images.available_cores()
