// The explorer: GET /info for the index's methods, POST /trace for a prompt, and the ranked sentences
// with each method's score as a bar (scaled over the rows shown) and the proponent mark.
// The query lives in the URL (?prompt=...&method=...), so a link reruns it.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prompt", "target", "method", "fusion", "weight", "k"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function methodsOf(singles) {
  const out = [...singles];
  for (const a of singles) for (const b of singles) if (a !== b) out.push(`${a}+${b}`);
  return out;
}

async function loadInfo() {
  const res = await fetch("/info");
  const info = await res.json();
  if (!res.ok) throw new Error(info.detail || res.statusText);
  const select = $("method");
  for (const m of methodsOf(info.serve.methods)) select.append(el("option", { value: m }, m));
  select.value = info.serve.methods.includes("embed") ? "embed+bm25" : "bm25";
  $("index-info").textContent = `${info.corpus.sentences.toLocaleString()} sentences from ${info.corpus.source}` +
    ` · model ${info.model.name} · ${info.serve.methods.join(", ")} · ${info.serve.device}`;
}

function bar(method, value, lo, hi) {
  if (value === null || value === undefined) return el("span", { class: "mute" }, "–");
  const width = hi > lo ? (100 * (value - lo)) / (hi - lo) : 100;
  return el("div", { class: "bar", "data-method": method, title: `${method}: ${value}` },
    el("span", { style: `width: ${width.toFixed(1)}%` }), el("b", {}, value.toFixed(3)));
}

function range(rows, get) {
  const values = rows.map(get).filter((v) => v !== null && v !== undefined);
  return [Math.min(0, ...values), Math.max(...values)]; // bars start at 0 unless a score is negative
}

// A sentence as it is; a passage of a longer document under its document id and character span, its text a summary
// that opens onto the document's text around it, the passage highlighted.
function textCell(r) {
  if (!r.document) return [r.text];
  return [el("div", { class: "where mute" }, `${r.document} · characters ${r.span[0]}–${r.span[1]}`),
    el("details", {}, el("summary", {}, r.text),
      el("div", { class: "context" }, r.before ? `…${r.before}` : "", el("mark", {}, r.text), r.after ? `${r.after}…` : ""))];
}

function render(result, timing) {
  const methods = result.rows.length ? Object.keys(result.rows[0].scores) : [];
  const truth = result.ground_truth;
  const given = result.target_from === "user" ? "given" : "the model's answer";
  const summary = $("summary");
  summary.replaceChildren(
    el("div", {}, "answer: ", el("span", { id: "answer" }, result.target), el("span", { class: "mute" }, ` (${given})`)),
    el("div", { class: "mute" }, `method ${result.method}` + (result.fusion ? ` (fusion ${result.fusion})` : "") +
      (truth ? ` · ${truth.proponents.length} known proponent(s), marked ★` : " · no ground truth for this prompt") +
      (timing ? ` · traced in ${timing} ms` : "")));
  if (result.note) summary.append(el("div", { class: "mute", id: "note" }, `note: ${result.note}`));

  const fused = methods.length > 1;
  const passages = result.rows.some((r) => r.document);
  const head = [el("th", {}, "#"), el("th", {}, passages ? "passage" : "sentence"), ...(fused ? [el("th", {}, "fused")] : []),
    ...methods.map((m) => el("th", {}, m)), el("th", { title: "known proponent" }, "P")];
  $("head").replaceChildren(...head);
  const scale = Object.fromEntries(methods.map((m) => [m, range(result.rows, (r) => r.scores[m])]));
  const fusedScale = range(result.rows, (r) => r.score);
  $("rows").replaceChildren(...result.rows.map((r) => el("tr",
    { "data-sentence-id": r.sentence_id, class: r.proponent ? "proponent" : "" },
    el("td", { class: "rank" }, String(r.rank)),
    el("td", { class: "text" }, ...textCell(r)),
    ...(fused ? [el("td", { class: "score" }, bar("fused", r.score, ...fusedScale))] : []),
    ...methods.map((m) => el("td", { class: "score" }, bar(m, r.scores[m], ...scale[m]))),
    el("td", { class: "mark" }, r.proponent ? el("span", { class: "proponent-mark", title: "known proponent" }, "★") : ""))));
  $("results").hidden = result.rows.length === 0;
  if (!result.rows.length) summary.append(el("div", { class: "mute" }, "(no results)"));
}

async function trace() {
  const form = new FormData($("query"));
  const body = { prompt: form.get("prompt"), method: form.get("method"), fusion: form.get("fusion"),
    weight: Number(form.get("weight")), k: Number(form.get("k")) };
  if (form.get("target").trim()) body.target = form.get("target");
  history.replaceState(null, "", "?" + new URLSearchParams(FIELDS.map((f) => [f, form.get(f)])));
  document.body.dataset.state = "loading";
  $("summary").replaceChildren(el("div", { class: "mute" }, "tracing..."));
  try {
    const res = await fetch("/trace", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const out = await res.json();
    if (!res.ok) throw new Error(out.detail || res.statusText);
    const total = /total;dur=([\d.]+)/.exec(res.headers.get("Server-Timing") || "");
    render(out, total && Math.round(Number(total[1])));
    document.body.dataset.state = "done";
  } catch (err) {
    $("results").hidden = true;
    $("summary").replaceChildren(el("div", { class: "error", id: "error" }, String(err.message || err)));
    document.body.dataset.state = "error";
  }
}

async function main() {
  $("query").addEventListener("submit", (e) => { e.preventDefault(); trace(); });
  try {
    await loadInfo();
  } catch (err) {
    $("index-info").textContent = `cannot read /info: ${err.message || err}`;
  }
  const params = new URLSearchParams(location.search);
  for (const f of FIELDS) if (params.get(f) !== null) $(f).value = params.get(f);
  if (params.get("prompt")) await trace();
}

main();
