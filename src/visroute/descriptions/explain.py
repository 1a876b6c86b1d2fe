"""Explanations as a self-contained HTML page (image, top-k classes, deciding descriptions) or JSON."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from visroute.io import atomic_write_text

def thumbnail_data_uri(path: str | Path, size: int = 320) -> str:
    from visroute.data.images import load_image

    im = load_image(path)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def render_html(items: list[dict], title: str = "visroute explain") -> str:
    """``items``: [{"path", "model", "head", "classes": [{class, score, probability?, descriptions: [...]}]}]."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}"
             ".img{display:flex;gap:2em;margin-bottom:2.5em;border-bottom:1px solid #ddd;padding-bottom:1.5em}"
             "table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;font-size:14px}"
             ".bar{background:#4a7bd0;height:10px;display:inline-block}h3{margin:.6em 0 .2em}"
             ".note{color:#a60}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for it in items:
        # one bar scale for all classes of an image: bar lengths compare across classes, not only within one
        top = max((abs(d["contribution"]) for c in it["classes"] for d in c["descriptions"]), default=1.0) or 1.0
        parts.append("<div class='img'>")
        parts.append(f"<div><img src='{it['image']}' alt=''><br><small>{html.escape(str(it['path']))}</small></div><div>")
        parts.append(f"<p>model <code>{html.escape(it['model'])}</code>, head <code>{html.escape(it['head'])}</code></p>")
        if it.get("random_weights"):
            parts.append("<p class='note'>random weights (smoke test): predictions are at chance level</p>")
        for rank, c in enumerate(it["classes"], 1):
            prob = f", p = {c['probability']:.3f}" if "probability" in c else ""
            parts.append(f"<h3>{rank}. {html.escape(c['class'])} <small>(score {c['score']:.4f}{prob})</small></h3><table>"
                         "<tr><th>description</th><th>similarity</th><th>contribution</th>"
                         f"<th><small>bar: contribution, one scale for all classes (full = {top:.4f})</small></th></tr>")
            for d in c["descriptions"]:
                width = int(120 * abs(d["contribution"]) / top)
                parts.append(f"<tr><td>{html.escape(d['text'])}</td><td>{d['similarity']:.4f}</td>"
                             f"<td>{d['contribution']:.4f}</td><td><span class='bar' style='width:{width}px'></span></td></tr>")
            parts.append("</table>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "".join(parts)


def explain_images(images, descriptions: str, model: str = "random-tiny", classes: str | None = None,
                   selection_dataset: str | None = None, top_k: int = 3, html_out: str | Path = "explain.html",
                   device: str = "auto") -> tuple[list[dict], list]:
    """``visroute explain``: why each image got its class, with a description head (or the disclip selection when
    ``selection_dataset`` is given); writes the HTML page and returns (one explanation per image, skipped files)."""
    from visroute.data.text import parse_labels
    from visroute.descriptions import load_descriptions
    from visroute.errors import VisrouteError
    from visroute.features import encode_image_files
    from visroute.features.cache import FeatureCache
    from visroute.heads.descriptions import DescriptionEnsembleClassifier
    from visroute.heads.selection import DiscriminativeSelectionClassifier
    from visroute.models import load_model

    try:
        dset = load_descriptions(descriptions)
        names = parse_labels(labels_file=classes)[0] if classes else list(dset.classnames)
        clip = load_model(model, device=device)
        if selection_dataset:
            from visroute.data.datasets import load_dataset

            sel = load_dataset(selection_dataset, names)
            idx, X_sel = FeatureCache().encode(clip, sel).load()
            head = DiscriminativeSelectionClassifier(clip, dset, k=top_k).fit(names, X_sel, sel.labels[idx])
        else:
            head = DescriptionEnsembleClassifier(clip, dset, style="sentence" if dset.kind == "sentence" else "dclip").fit(names)
        enc = encode_image_files(clip, images, num_workers=0)
    except ValueError as e:  # malformed description or class files
        raise VisrouteError(str(e)) from e
    head_name = "disclip" if selection_dataset else "descriptions"
    items = [{"path": path, "model": clip.spec, "head": head_name, "random_weights": clip.is_random,
              "classes": head.explain(emb) if selection_dataset else head.explain(emb, top_k)}
             for path, emb in zip(enc.paths, enc.embeddings)]
    skipped = list(enc.skipped)
    if not items:  # no page rather than an empty one; an earlier page at that path stays as it was
        first = f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise VisrouteError(f"none of the {len(skipped)} image(s) could be explained{first}; {html_out} not written")
    page = render_html([{**it, "image": thumbnail_data_uri(it["path"])} for it in items])
    try:
        atomic_write_text(html_out, page)  # complete or not there: never a torn or empty page
    except OSError as e:
        raise VisrouteError(f"cannot write {html_out} ({e.strerror or e})") from None
    return items, skipped
