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

// rows: [name, value in 0..1, extra text]; the caption says what the bars measure
function bars(target, rows, chosen, caption) {
  if (caption) target.append(el("div", "caption", caption));
  for (const [name, value, extra] of rows) {
    const row = el("div", "bar" + (name === chosen ? " chosen" : ""));
    row.append(el("span", "name", name));
    const track = el("div", "track");
    const fill = el("div", "fill");
    fill.style.width = Math.max(0, Math.min(100, value * 100)).toFixed(1) + "%";
    track.append(fill);
    row.append(track, el("span", "value", value.toFixed(3)), el("span", "extra", extra || ""));
    target.append(row);
  }
}

function ms(seconds) {
  return seconds >= 1 ? seconds.toFixed(2) + " s" : (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
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
  const typed = $("labels").value.trim();
  const ok = explainable.has($("label-set").value) && !typed;
  $("explain").disabled = !ok;
  if (!ok) $("explain").checked = false;
  // say why explain is off: it needs a label set that the server configured with descriptions
  $("explain-why").textContent = ok ? "" : typed
    ? "explain is off: typed labels have no descriptions; pick a label set configured with descriptions"
    : (explainable.size
      ? "explain is off for this label set (no descriptions); try " + [...explainable].join(", ")
      : "explain is off: no label set on this server has descriptions (serve.yaml: head: descriptions)");
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
  const t0 = performance.now();
  try {
    const doc = await call("/v1/classify", form);
    const trip = (performance.now() - t0) / 1000;
    bars(out, doc.labels.map((l, i) => [l, doc.scores[i]]), doc.labels[0], "probability per class (top " + doc.labels.length + ")");
    out.append(el("div", "meta", `${doc.model} · batch of ${doc.batch_size} · server ${ms(doc.timings.total_ms / 1000)} · round trip ${ms(trip)}`));
    if (doc.random_weights) out.append(el("div", "note", "This model has random weights (smoke test): predictions are at chance."));
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
  const t0 = performance.now();
  try {
    const doc = await call("/v1/route", form);
    const trip = (performance.now() - t0) / 1000;
    out.append(el("div", "answer", `${doc.chosen} answered: ${doc.answer === null ? "(no option parsed)" : doc.answer}`));
    const expected = doc.expected_cost || {};
    const price = (v) => (v === null || v === undefined ? "cost unknown" : "$" + v.toPrecision(3) + " expected");
    bars(out, Object.entries(doc.predicted_accuracy).map(([m, p]) => [m, p, price(expected[m])]), doc.chosen,
      "predicted probability of success per model (the router's estimate) · expected cost per task");
    const cost = doc.cost === null ? "unknown" : "$" + doc.cost.toPrecision(3);
    const model = doc.latency_s === null || doc.latency_s === undefined ? "not run" : ms(doc.latency_s);
    out.append(el("div", "meta", `cost of this call ${cost} · model latency ${model} · round trip ${ms(trip)} · λ ${doc.lambda} (cost weight)`));
    status("");
  } catch (err) { status(err.message, true); }
});

loadModels();
