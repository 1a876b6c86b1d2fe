"""Saving and loading fitted routers as data: parameters and small state in JSON, arrays and weights in
safetensors, fine-tuned transformers checkpoints as safetensors directories. Loading runs no code from the
files: no pickle, no ``torch.load``, no ``trust_remote_code``; a router kind or parameter the code does not
know is rejected.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError

SCHEMA = "visroute.router-state/1"


class BundleError(VisrouteError):
    """A router bundle is malformed or was not written by visroute."""


def _params(est) -> dict:
    if hasattr(est, "get_params"):
        params = est.get_params(deep=False)
    else:
        params = {k: getattr(est, k) for k in inspect.signature(type(est).__init__).parameters if k != "self"
                  and hasattr(est, k)}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    json.dumps(v)  # raises TypeError for anything that is not plain data
    return v


def save_state(est, directory: Path) -> dict:
    """Write ``est``'s fitted state under ``directory``; returns the JSON description (params + state index)."""
    import torch
    from safetensors.numpy import save

    from visroute.io import atomic_write_bytes

    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    state: dict[str, dict] = {}
    for name, val in sorted(vars(est).items()):
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(val, np.ndarray):
            arrays[name] = np.ascontiguousarray(val)
            state[name] = {"type": "array"}
        elif isinstance(val, torch.Tensor):
            arrays[name] = val.detach().cpu().contiguous().numpy()
            state[name] = {"type": "tensor"}
        elif hasattr(val, "save_pretrained"):
            kind = "tokenizer" if not isinstance(val, torch.nn.Module) else "sequence-classifier"
            kw = {} if kind == "tokenizer" else {"safe_serialization": True}
            val.save_pretrained(str(directory / name), **kw)
            state[name] = {"type": kind}
        elif isinstance(val, torch.nn.Module):
            sd = val.state_dict()
            for k, t in sd.items():
                arrays[f"{name}.{k}"] = t.detach().cpu().contiguous().numpy()
            state[name] = {"type": "module", "keys": list(sd)}
        else:
            try:
                state[name] = {"type": "json", "value": _jsonable(val)}
            except TypeError:
                raise VisrouteError(f"cannot save router attribute '{name}' ({type(val).__name__})") from None
    atomic_write_bytes(directory / "state.safetensors", save(arrays or {"_empty": np.zeros(0, np.float32)}))
    return {"schema": SCHEMA, "class": type(est).__name__, "params": _params(est), "state": state}


def load_state(cls, info: dict, directory: Path):
    """Rebuild an estimator of class ``cls`` from ``save_state``'s description and files."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if info.get("schema") != SCHEMA:
        raise BundleError(f"{directory}: unknown router state schema {info.get('schema')!r} (expected {SCHEMA})")
    if info.get("class") != cls.__name__:
        raise BundleError(f"{directory}: state of a {info.get('class')!r}, expected {cls.__name__}")
    params = info.get("params") or {}
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "kw", "kwargs"}
    if hasattr(cls, "_get_param_names"):
        allowed |= set(cls._get_param_names())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BundleError(f"{directory}: unknown parameter(s) {unknown} for {cls.__name__}")
    est = cls(**params)
    try:
        arrays = load_file(str(directory / "state.safetensors"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise BundleError(f"{directory}/state.safetensors is missing or damaged ({str(e).splitlines()[0]})") from None
    state = info.get("state") or {}
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise BundleError(f"{directory}: 'state' must map attribute names to descriptions")
    # plain values first: restoring a module needs the shapes saved beside it (n_features_in_, n_models_)
    for name, spec in sorted(state.items(), key=lambda kv: kv[1].get("type") in ("module", "sequence-classifier")):
        if not (isinstance(name, str) and name.endswith("_") and not name.startswith("_")):
            raise BundleError(f"{directory}: invalid state attribute name {name!r}")
        setattr(est, name, _restore_one(est, name, spec, arrays, directory))
    if hasattr(est, "_on_load"):
        est._on_load()
    return est


def _restore_one(est, name: str, spec: dict, arrays: dict, directory: Path):
    import torch

    kind = spec.get("type")
    try:
        if kind == "array":
            return arrays[name]
        if kind == "tensor":
            return torch.from_numpy(arrays[name])
        if kind == "json":
            return spec.get("value")
        if kind == "module":
            keys = list(spec["keys"])
            sd = {k: torch.from_numpy(arrays[f"{name}.{k}"]) for k in keys}
            weights = [k for k in keys if k.endswith("weight")]
            biases = [k for k in keys if k.endswith("bias")]
            if not weights or not biases:
                raise BundleError(f"{directory}: module '{name}' has no weight/bias tensors")
            d = getattr(est, "n_features_in_", None) or int(sd[weights[0]].shape[1])
            m = getattr(est, "n_models_", None) or int(sd[biases[-1]].shape[0])
            net = est._build(int(d), int(m))
            net.load_state_dict(sd, strict=True)
            net.eval()
            return net
        if kind in ("sequence-classifier", "tokenizer"):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = directory / name
            if kind == "tokenizer":
                return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            model = AutoModelForSequenceClassification.from_pretrained(str(path), trust_remote_code=False,
                                                                       use_safetensors=True)
            return model.eval()
    except KeyError as e:
        raise BundleError(f"{directory}: state tensor {e} is missing") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise BundleError(f"{directory}: cannot restore '{name}' ({str(e).splitlines()[0]})") from None
    raise BundleError(f"{directory}: unknown state type {kind!r} for '{name}'")
