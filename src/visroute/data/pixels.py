"""A model's image preprocessing split in two: 8-bit pixels (in the decoding workers) and an exact per-channel
lookup to the normalised float values (at the destination).

Every supported preprocessing ends in an elementwise, per-channel map from an 8-bit value to a float
(rescale by 1/255, subtract the mean, divide by the std). So a worker can stop at the resized, cropped
uint8 image and send a quarter of the bytes; the destination applies a (channels, 256) table built by
running the model's own last steps on a ramp image, which reproduces them bit for bit. A plan is built
only after it reproduces the model's preprocessing exactly on a probe image; otherwise ``pixel_plan``
returns None and callers keep the per-image float path.

With ``fast=True`` an image larger than the resize target is resized with torch's antialiased uint8
kernel (the same filter family as PIL's, several times faster; on ImageNet photos the mean difference from
PIL's resize is under 0.02 levels out of 255, over one level on under 0.002% of pixels) instead of the model's
own resize. Images at or below the target (CIFAR's 32 px, say) always
take the exact path, so they never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: part of the feature-cache key of fast-decoded features: bump when the fast resize changes
FAST_RESIZE_VERSION = "torch-aa-1"

_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resample codes with an antialiased uint8 kernel in torch


@dataclass(frozen=True)
class FastResize:
    """Resize (shortest edge to ``short``, or to exactly ``size`` (h, w)) then centre-crop ``crop`` (h, w)."""

    mode: str
    short: int | None = None
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    round_crop: bool = False  # torchvision rounds the crop offset; transformers floors it

    def target(self, w: int, h: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.short * long / short)
        return (new_long, self.short) if w <= h else (self.short, new_long)

    @property
    def min_side(self) -> int:
        """The shortest side a decoded image needs so that resizing only ever shrinks it."""
        return int(self.short if self.size is None else max(self.size))

    def applies(self, w: int, h: int) -> bool:
        """Only downscaling takes the fast kernel (that is where the time goes); upscaling stays exact."""
        th, tw = self.target(w, h)
        return h > th and w > tw

    def __call__(self, image: Any):
        import torch

        arr = np.array(image, dtype=np.uint8)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # channels-last strides: torch's fast uint8 path
        th, tw = self.target(image.width, image.height)
        x = torch.nn.functional.interpolate(x, size=(th, tw), mode=self.mode, antialias=True, align_corners=False)
        if self.crop is not None:
            ch, cw = self.crop
            off = (lambda d: int(round(d / 2.0))) if self.round_crop else (lambda d: d // 2)
            top, left = off(th - ch), off(tw - cw)
            if top >= 0 and left >= 0:
                x = x[:, :, top : top + ch, left : left + cw]
            else:
                return None  # padding crops: left to the exact path
        return x[0].contiguous()


class PixelPlan:
    """Picklable: ``pixels(image, fast)`` -> uint8 (C, H, W) in a worker; ``finish(batch)`` -> the model's input."""

    def __init__(self, exact: Callable[[Any], Any], lut: np.ndarray, fast: FastResize | None, key: str = "pixel_values"):
        self.exact = exact
        self.lut = np.ascontiguousarray(lut, dtype=np.float32)
        self.fast = fast
        self.key = key

    def pixels(self, image: Any, fast: bool = False):
        if fast and self.fast is not None and image.mode == "RGB" and self.fast.applies(image.width, image.height):
            out = self.fast(image)
            if out is not None:
                return out
        return self.exact(image)

    def finish(self, batch, device: Any = None, dtype: Any = None) -> dict:
        """uint8 (B, C, H, W) -> {key: (B, C, H, W) floats}, through the exact per-channel table, computed where
        the model is (``device``) and handed over in its ``dtype``: a GPU receives a quarter of the bytes."""
        import torch

        if device is not None and torch.device(device).type != "cpu":
            lut = torch.from_numpy(self.lut).to(device)
            u = batch.to(device, non_blocking=True).long()
            u += (torch.arange(u.shape[1], device=device) * 256).view(1, -1, 1, 1)
            out = lut.view(-1)[u]
        else:
            u = batch.numpy()
            arr = np.empty(u.shape, np.float32)
            for c in range(u.shape[1]):
                np.take(self.lut[c], u[:, c], out=arr[:, c])
            out = torch.from_numpy(arr)
        return {self.key: out if dtype is None or not dtype.is_floating_point else out.to(dtype)}


class _HFExact:
    """The model's own HF image processor, stopped before rescaling (uint8 out)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any):
        return self.processor(images=image, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]


class _ComposeExact:
    """The geometric head of a torchvision Compose (before ToTensor), as a uint8 (C, H, W) tensor."""

    def __init__(self, steps: list):
        self.steps = steps

    def __call__(self, image: Any):
        import torch

        for step in self.steps:
            image = step(image)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _ramp():
    from PIL import Image

    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return Image.fromarray(ramp, mode="RGB")  # 256 x 1: pixel x holds value x in every channel


def _probe():
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:241, 0:317]
    img = (np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(0, 40, (241, 317, 3))) % 256
    return Image.fromarray(img.astype(np.uint8), mode="RGB")


def _hf_plan(processor: Any) -> PixelPlan | None:
    out = processor(images=_ramp(), do_resize=False, do_center_crop=False, return_tensors="pt")
    if set(k for k in out if hasattr(out[k], "shape")) != {"pixel_values"}:
        return None  # extra outputs (patch masks, spatial shapes): not a plain resize + normalise
    lut = out["pixel_values"][0].float().numpy()
    if lut.shape[-2:] != (1, 256):
        return None
    return PixelPlan(_HFExact(processor), lut[:, 0, :], _hf_fast(processor))


def _get(size: Any, key: str):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _hf_fast(p: Any) -> FastResize | None:
    mode = _MODES.get(int(getattr(p, "resample", -1) or -1))
    if mode is None or not getattr(p, "do_resize", False) or getattr(p, "do_pad", False):
        return None
    size, crop = getattr(p, "size", None), None
    if getattr(p, "do_center_crop", False):
        cs = getattr(p, "crop_size", None)
        if not (_get(cs, "height") and _get(cs, "width")):
            return None
        crop = (int(_get(cs, "height")), int(_get(cs, "width")))
    if _get(size, "shortest_edge") and not _get(size, "longest_edge"):
        return FastResize(mode, short=int(_get(size, "shortest_edge")), crop=crop)
    if _get(size, "height") and _get(size, "width"):
        return FastResize(mode, size=(int(_get(size, "height")), int(_get(size, "width"))), crop=crop)
    return None


def _compose_plan(transform: Any) -> PixelPlan | None:
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = list(getattr(transform, "transforms", []))
    i = next((j for j, s in enumerate(steps) if isinstance(s, ToTensor)), None)
    if i is None or not all(isinstance(s, (ToTensor, Normalize)) for s in steps[i:]):
        return None

    lut = Compose(steps[i:])(_ramp()).float().numpy()
    return PixelPlan(_ComposeExact(steps[:i]), lut[:, 0, :], _compose_fast(steps[:i]))


def _compose_fast(steps: list) -> FastResize | None:
    kinds = [type(s).__name__ for s in steps]
    to_rgb = lambda s: getattr(s, "__name__", "") == "_convert_to_rgb" or getattr(s, "mode", None) == "RGB"  # noqa: E731
    if any(k not in ("Resize", "CenterCrop") and not to_rgb(s) for s, k in zip(steps, kinds)):
        return None  # some other step (padding, a random crop): no fast equivalent
    geo = [s for s, k in zip(steps, kinds) if k in ("Resize", "CenterCrop")]
    if [type(s).__name__ for s in geo] not in (["Resize"], ["Resize", "CenterCrop"]):
        return None
    resize = geo[0]
    mode = {"bicubic": "bicubic", "bilinear": "bilinear"}.get(str(getattr(resize.interpolation, "value", "")).lower())
    if mode is None or getattr(resize, "max_size", None) or getattr(resize, "antialias", True) is False:
        return None
    size = list(resize.size) if isinstance(resize.size, (list, tuple)) else [resize.size]
    crop = None
    if len(geo) == 2:
        cs = list(geo[1].size)
        crop = (int(cs[0]), int(cs[-1]))
    if len(size) == 1:
        return FastResize(mode, short=int(size[0]), crop=crop, round_crop=True)
    return FastResize(mode, size=(int(size[0]), int(size[1])), crop=crop, round_crop=True)


# process-wide cache keyed by the preprocess object (weakly: it goes with its model); a plan is pure data
_PLANS: "weakref.WeakKeyDictionary" = None  # type: ignore[assignment]


def pixel_plan(preprocess: Any) -> PixelPlan | None:
    """The uint8 + lookup split of ``preprocess`` (a backend's image preprocess), or None where it is not exact;
    built once per preprocess object."""
    global _PLANS
    import weakref

    if _PLANS is None:
        _PLANS = weakref.WeakKeyDictionary()
    try:
        return _PLANS[preprocess]
    except (KeyError, TypeError):
        pass
    plan = _build_plan(preprocess)
    try:
        _PLANS[preprocess] = plan
    except TypeError:  # not weak-referenceable: built again next time
        pass
    return plan


def _build_plan(preprocess: Any) -> PixelPlan | None:
    try:
        if hasattr(preprocess, "image_processor"):
            plan = _hf_plan(preprocess.image_processor)
        elif hasattr(preprocess, "transform"):
            plan = _compose_plan(preprocess.transform)
        else:
            return None
        if plan is None:
            return None
        probe = _probe()
        ref = preprocess(probe)
        if set(ref) != {plan.key}:
            return None
        got = plan.finish(plan.exact(probe)[None])[plan.key][0]
        want = ref[plan.key]
        if got.shape != want.shape or not bool((got == want.float()).all()):
            return None
        if plan.exact(probe.resize((probe.height, probe.width))).shape != got.shape:
            return None  # the output size follows the input's: batches could not be stacked in the workers
        return plan
    except Exception:  # any surprise in a processor means: keep its own per-image path
        return None
