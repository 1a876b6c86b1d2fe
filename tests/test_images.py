"""Bad and unusual image files: each gives the documented behaviour (decoded correctly, or skipped with a reason)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from visroute.data.batches import iter_preprocessed_batches
from visroute.data.images import ImageDecodeError, find_images, load_image


@pytest.fixture()
def odd_images(tmp_path, imagenet_images):
    d = tmp_path / "imgs"
    d.mkdir()
    good = d / "good.jpg"
    shutil.copy(imagenet_images[0], good)
    data = good.read_bytes()
    (d / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (d / "text.jpg").write_text("this is not an image\n")
    Image.open(imagenet_images[1]).convert("CMYK").save(d / "cmyk.jpg")
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(d / "deep16.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "tiny1x1.png")
    Image.open(imagenet_images[2]).convert("P").save(d / "palette.png")
    (d / "notes.txt").write_text("not picked up by folder search")
    return d


def test_find_images_filters_folders_by_extension_but_keeps_named_files(odd_images, tmp_path):
    found, missing = find_images([odd_images, odd_images / "notes.txt", tmp_path / "nope.jpg"])
    names = [p.name for p in found]
    assert names.count("notes.txt") == 1 and names[:-1] == sorted(names[:-1])
    assert len(found) == 8 and [m.path for m in missing] == [str(tmp_path / "nope.jpg")]


def test_decode_rules(odd_images):
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(odd_images / "corrupt.jpg")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(odd_images / "text.jpg")
    assert load_image(odd_images / "cmyk.jpg").mode == "RGB"
    deep = np.asarray(load_image(odd_images / "deep16.png"))
    # 16-bit values are rescaled to 8 bits, not clipped to white
    assert deep.dtype == np.uint8 and deep.min() == 0 and 250 <= deep.max() <= 255 and 100 < deep.mean() < 160
    assert load_image(odd_images / "tiny1x1.png").size == (1, 1)
    assert load_image(odd_images / "palette.png").mode == "RGB"


def test_exif_orientation_is_applied(tmp_path, imagenet_images):
    im = Image.open(imagenet_images[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (im.height, im.width)


def test_parallel_loader_skips_and_counts_bad_files_in_order(odd_images, tiny_clip_dir):
    from visroute.models import load_model

    model = load_model(f"hf:{tiny_clip_dir}", device="cpu")
    paths, _ = find_images([odd_images])
    seen, skipped = [], []
    for idx, batch, bad in iter_preprocessed_batches(paths, model.preprocess, model.collate, batch_size=3, num_workers=2):
        seen += idx
        skipped += bad
        if batch is not None:
            assert batch["pixel_values"].shape == (len(idx), 3, 224, 224)
    assert seen == sorted(seen)
    assert sorted(s.path.rsplit("/", 1)[1] for s in skipped) == ["corrupt.jpg", "text.jpg"]
    assert len(seen) == 5  # good, cmyk, 16-bit, 1x1, palette


def test_draft_decoding_is_opt_in_and_keeps_enough_pixels(imagenet_images):
    full = load_image(imagenet_images[0])
    draft = load_image(imagenet_images[0], draft_size=224)
    assert min(draft.size) >= 224 and draft.size[0] <= full.size[0]
