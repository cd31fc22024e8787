// The page: send the text to /translate (debounced while typing, at once on Enter), show the
// translation, the n-best list and the attention of the chosen hypothesis. No libraries.
"use strict";
const $ = (id) => document.getElementById(id);
const source = $("source"), beam = $("beam"), nbest = $("nbest");
let sent = 0, timer = null, result = null;  // sent: the number of the newest request

function options(select, high, value) {
  const keep = Math.min(Number(select.value || value), high);
  select.replaceChildren(...Array.from({length: high}, (_, i) => new Option(String(i + 1), String(i + 1))));
  select.value = String(keep);
}

async function start() {
  const health = await (await fetch("health")).json();
  const m = health.model;
  $("model").textContent = `${m.source_language} → ${m.target_language} · ${m.encoder} encoder · ${m.decoder} decoder · ${m.attention} attention`;
  $("source-label").textContent = `Source (${m.source_language})`;
  $("target-label").textContent = `Translation (${m.target_language})`;
  options(beam, Math.min(health.limits.max_beam, 10), health.defaults.beam);
  options(nbest, Number(beam.value), Math.min(3, Number(beam.value)));
  beam.onchange = () => { options(nbest, Number(beam.value), nbest.value); translate(); };
  nbest.onchange = translate;
  source.oninput = () => { clearTimeout(timer); timer = setTimeout(translate, 300); };
  source.onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); clearTimeout(timer); translate(); }
  };
  document.body.dataset.ready = "true";
}

async function translate() {
  const text = source.value.replace(/\s+/g, " ").trim();
  const id = ++sent;
  if (!text) { show(null); return; }
  status("translating…");
  try {
    const response = await fetch("translate", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text, beam: Number(beam.value), nbest: Number(nbest.value), attention: true}),
    });
    const json = (response.headers.get("Content-Type") || "").includes("json");
    const body = json ? await response.json() : {error: `${response.status} ${response.statusText}`};
    if (id !== sent) return;  // a newer request is on its way: only the newest answer is shown
    if (!response.ok) throw new Error(body.error || response.statusText);
    show(body.translations[0]);
  } catch (err) {
    if (id === sent) status(`error: ${err.message}`, true);
  }
}

function status(text, error = false) {
  $("status").className = error ? "error" : "";
  $("status").textContent = text;
}

function show(line) {
  result = line;
  status("");
  $("translation").textContent = line ? line.text : "";
  $("hypotheses").replaceChildren(...(line ? line.nbest : []).map((h, i) => {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = h.text;
    li.append(text);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = h.score.toFixed(3);
    li.append(score);
    li.onclick = () => choose(i);
    return li;
  }));
  choose(0);
}

function choose(i) {
  document.querySelectorAll("#hypotheses li").forEach((li, j) => li.classList.toggle("chosen", i === j));
  const h = result && result.nbest[i];
  const src = result ? [...result.source_pieces, "</s>"] : [];
  $("source-pieces").replaceChildren(...src.map((p) => {
    const span = document.createElement("span");
    span.className = "piece";
    span.textContent = p;
    return span;
  }));
  $("heatmap").replaceChildren();
  if (!h || !h.attention) return;
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  head.append(document.createElement("th"));
  for (const p of src) { const th = document.createElement("th"); th.textContent = p; head.append(th); }
  const body = table.createTBody();
  [...h.pieces, "</s>"].forEach((p, r) => {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.textContent = p;
    row.append(th);
    h.attention[r].forEach((w, c) => {
      const td = row.insertCell();
      td.className = "cell";
      td.style.background = `rgba(29, 78, 216, ${w})`;
      td.title = `${p} → ${src[c]}: ${w.toFixed(3)}`;
    });
    row.onmouseenter = () => highlight(row, h.attention[r]);
    row.onmouseleave = () => highlight(null, null);
  });
  $("heatmap").append(table);
}

function highlight(row, weights) {
  document.querySelectorAll("#heatmap tbody tr").forEach((tr) => tr.classList.toggle("hover", tr === row));
  document.querySelectorAll("#source-pieces .piece").forEach((span, c) => {
    span.style.background = weights ? `rgba(245, 158, 11, ${weights[c]})` : "";
  });
}

start().catch((err) => status(`error: ${err.message}`, true));
