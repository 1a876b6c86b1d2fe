// The visroute web page: drop an image, classify it against a label set, route a task. No external resources.
"use strict";
const $ = (id) => document.getElementById(id);
let image = null;
let explainable = new Set();

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("visroute-key") || "";
keyInput.addEventListener("change", () => { sessionStorage.setItem("visroute-key", keyInput.value); loadModels(); });

function headers() {
  return keyInput.value ? { Authorization: "Bearer " + keyInput.value } : {};
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function status(text, isError) {
  const s = $("status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

async function call(path, form) {
  const r = await fetch(path, { method: "POST", body: form, headers: headers() });
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((doc.error && doc.error.message) || ("HTTP " + r.status));
  return doc;
}

function bars(target, rows, chosen) {
  for (const [name, value] of rows) {
    const row = el("div", "bar" + (name === chosen ? " chosen" : ""));
    row.append(el("span", "name", name));
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = Math.max(0, Math.min(100, value * 100)).toFixed(1) + "%";
    track.append(fill);
    row.append(track, el("span", "value", value.toFixed(3)));
    target.append(row);
  }
}

function option(select, value, text) {
  const o = el("option", "", text || value);
  o.value = value;
  select.append(o);
}

async function loadModels() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (!r.ok) { status(r.status === 401 ? "Enter the API key to use the service." : "Could not list models.", true); return; }
  status("");
  const doc = await r.json();
  const sets = $("label-set"), routers = $("router");
  const keep = [sets.value, routers.value];  // a reload (new key) keeps what the user picked
  sets.replaceChildren(); routers.replaceChildren();
  explainable = new Set();
  for (const m of doc.data) {
    if (m.kind === "contrastive") {
      for (const s of m.label_sets || []) option(sets, s, s + " (" + m.id + ")");
      for (const s of m.explainable_label_sets || []) explainable.add(s);
    }
    if (m.kind === "router") option(routers, m.id.slice("router-".length));
  }
  if (!routers.options.length) option(routers, "", "(no router configured)");
  if ([...sets.options].some((o) => o.value === keep[0])) sets.value = keep[0];
  if ([...routers.options].some((o) => o.value === keep[1])) routers.value = keep[1];
  updateExplain();
}

function updateExplain() {
  const ok = explainable.has($("label-set").value) && !$("labels").value.trim();
  $("explain").disabled = !ok;
  if (!ok) $("explain").checked = false;
}
$("label-set").addEventListener("change", updateExplain);
$("labels").addEventListener("input", updateExplain);

function setImage(file) {
  if (!file) return;
  image = file;
  const img = $("preview");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("drop-hint").textContent = file.name;
}
$("file").addEventListener("change", (e) => setImage(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setImage(e.dataTransfer.files[0]); });

$("classify-btn").addEventListener("click", async () => {
  const out = $("classify-result");
  out.replaceChildren();
  $("explanation").hidden = true;
  if (!image) { status("Choose an image first.", true); return; }
  const form = new FormData();
  form.append("image", image);
  const labels = $("labels").value.trim();
  if (labels) form.append("labels", labels); else form.append("label_set", $("label-set").value);
  form.append("top_k", $("top-k").value || "5");
  if ($("explain").checked) form.append("explain", "true");
  status("Classifying…");
  try {
    const doc = await call("/v1/classify", form);
    bars(out, doc.labels.map((l, i) => [l, doc.scores[i]]), doc.labels[0]);
    out.append(el("div", "meta", `${doc.model} · batch of ${doc.batch_size} · ${doc.timings.total_ms.toFixed(1)} ms`));
    if (doc.is_random) out.append(el("div", "note", "This model has random weights (smoke test): predictions are at chance."));
    if (doc.explanation) showExplanation(doc.explanation);
    status("");
  } catch (err) { status(err.message, true); }
});

function showExplanation(items) {
  const body = $("explanation-body");
  body.replaceChildren();
  for (const c of items) {
    body.append(el("h3", "", `${c.label} (${c.probability.toFixed(3)})`));
    const list = el("ul");
    for (const d of c.descriptions) list.append(el("li", "", `${d.text} — similarity ${d.similarity.toFixed(3)}`));
    body.append(list);
  }
  $("explanation").hidden = false;
  $("explanation").open = true;
}

$("route-btn").addEventListener("click", async () => {
  const out = $("route-result");
  out.replaceChildren();
  const form = new FormData();
  if (image) form.append("image", image);
  form.append("task", $("task").value);
  form.append("options", $("options").value);
  if ($("router").value) form.append("router", $("router").value);
  status("Routing…");
  try {
    const doc = await call("/v1/route", form);
    out.append(el("div", "answer", `${doc.chosen} answered: ${doc.answer === null ? "(no option parsed)" : doc.answer}`));
    bars(out, Object.entries(doc.predicted_accuracy), doc.chosen);
    const cost = doc.cost === null ? "unknown" : doc.cost.toPrecision(3);
    out.append(el("div", "meta", `cost ${cost} · latency ${(doc.latency_s || 0).toFixed(2)} s · λ ${doc.lambda}`));
    status("");
  } catch (err) { status(err.message, true); }
});

loadModels();
