"""Image embeddings for text+image routers, from the same feature cache for every dataset kind.

Classification datasets (folder, CSV/JSONL manifest, ``hf:``, ``torchvision:``) are encoded through
``FeatureCache`` by item id; task files by their image paths. An image that cannot be embedded stops the run
with a clear error: a router never learns from (or routes with) substituted zeros. Text-only tasks have no
image; their image part is the zero vector by definition, in training and at route time alike.
"""

from __future__ import annotations

import numpy as np

from visroute.errors import VisrouteError


class ImageFeatureError(VisrouteError):
    """Image embeddings for routing could not be produced."""


def image_model(spec: str, runtime=None):
    """The image model through the caller's ``Runtime`` memo: whoever holds the runtime (a service, a ``Router``,
    a loop of route calls) holds one copy of each model; no process-wide copy is kept here."""
    from visroute.pipeline.build import Runtime, load_contrastive
    from visroute.pipeline.spec import PipelineSpec

    return load_contrastive(PipelineSpec(model=spec, device="cpu"), runtime if runtime is not None else Runtime())


def encode_pils(model_spec: str, images: list, runtime=None) -> np.ndarray:
    """Embeddings of decoded PIL images (None = no image: zeros), e.g. a service's uploads."""
    import torch

    model = image_model(model_spec, runtime)
    present = [im for im in images if im is not None]
    dim = embedding_dim(model)
    out = np.zeros((len(images), dim), np.float32)
    if present:
        with torch.inference_mode():
            emb = model.encode_images(model.collate([model.preprocess(im) for im in present])).float().cpu().numpy()
        out[[i for i, im in enumerate(images) if im is not None]] = emb
    return out


def encode_paths(model_spec: str, paths: list[str], runtime=None) -> np.ndarray:
    """Embeddings of image files ("" = no image: zeros); any unreadable file is an error naming it."""
    from visroute.features import encode_image_files

    model = image_model(model_spec, runtime)
    unique = [p for p in dict.fromkeys(paths) if p]
    enc = encode_image_files(model, unique, num_workers=0)
    if enc.skipped:
        first = enc.skipped[0]
        raise ImageFeatureError(f"{len(enc.skipped)} image(s) cannot be embedded for routing, e.g. {first.path}: "
                                f"{first.reason}")
    dim = int(enc.embeddings.shape[1]) if len(enc.paths) else embedding_dim(model)
    lookup = {p: e.numpy() for p, e in zip(enc.paths, enc.embeddings)}
    return np.stack([lookup[p] if p else np.zeros(dim, np.float32) for p in paths]).astype(np.float32) \
        if paths else np.zeros((0, dim), np.float32)


def embedding_dim(model) -> int:
    import torch

    with torch.no_grad():
        return int(model.encode_texts(["x"]).shape[1])


def table_image_embeddings(model_spec: str | None, part, runtime=None) -> np.ndarray:
    """(rows, dim) image embeddings for a routing table's rows."""
    from visroute.data.datasets import SubsetDataset, load_dataset
    from visroute.features.cache import FeatureCache
    from visroute.router.data.grid import is_task_file

    if not model_spec:
        raise ImageFeatureError("a text+image router needs an image model (a contrastive model spec)")
    specs = part.meta.get("dataset_specs") or {}
    model = image_model(model_spec, runtime)
    out: np.ndarray | None = None
    for name in sorted(set(part.dataset)):
        rows = np.flatnonzero(part.dataset == name)
        spec = specs.get(name)
        if not spec:
            raise ImageFeatureError(f"the records name no dataset spec for '{name}', so its images cannot be found; "
                                    "re-run the grid with this version of visroute")
        if is_task_file(spec):
            emb = encode_paths(model_spec, [str(p) for p in part.image_path[rows]], runtime)
        else:
            ds = load_dataset(spec)
            index = {ds.item_id(i): i for i in range(len(ds))}
            wanted = [str(x) for x in part.image_id[rows]]
            missing = [w for w in wanted if w not in index]
            if missing:
                raise ImageFeatureError(f"dataset '{name}' ({spec}) has no item(s) {missing[:3]}"
                                        f"{' ...' if len(missing) > 3 else ''}")
            uniq = sorted({index[w] for w in wanted})
            fs = FeatureCache().encode(model, SubsetDataset(ds, uniq), num_workers=0)
            if fs.skipped:
                s = fs.skipped[0]
                raise ImageFeatureError(f"{len(fs.skipped)} image(s) of '{name}' cannot be embedded, e.g. {s.path}: "
                                        f"{s.reason}")
            idx, X = fs.load()
            pos = {uniq[int(i)]: r for r, i in enumerate(idx)}
            X = X.numpy() if hasattr(X, "numpy") else np.asarray(X)
            emb = X[[pos[index[w]] for w in wanted]]
        if out is None:
            out = np.zeros((len(part), emb.shape[1]), np.float32)
        out[rows] = emb
    return out if out is not None else np.zeros((0, embedding_dim(model)), np.float32)
