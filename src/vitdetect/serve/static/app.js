// vitdetect's web page: send the chosen or dropped images to POST v1/predict and show each verdict.
// Plain browser JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const state = { limits: { max_files: 16, max_upload_mb: 20 }, threshold: 0.5 };
const UNCERTAIN = 0.1;  // a P(FAKE) this close to the threshold is flagged as a weak verdict
const byId = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadModel() {
  try {
    const response = await fetch("v1/model");
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || response.statusText);
    state.limits = info.limits;
    state.threshold = info.threshold;
    byId("model").textContent =
      `Model: ${info.name}, ${info.parameters.toLocaleString("en")} parameters (${info.checkpoint}).`;
    byId("rule").textContent = `An image is called AI-generated (FAKE) when P(FAKE), the model's probability ` +
      `that it is AI-generated, is at least ${info.threshold.toFixed(2)}.`;
    byId("explain").disabled = !info.explanations;
    byId("explain-option").title = info.explanations ? "" : "This server has no explanations.";
  } catch (error) {
    byId("model").textContent = `Cannot reach the vitdetect server (${error.message}).`;
  }
}

// Requests within the server's limits: at most max_files images and max_upload_mb per request.
function requestsFor(items) {
  const maxBytes = state.limits.max_upload_mb * 1e6 * 0.95;  // room for the multipart framing
  const groups = [];
  let group = [], bytes = 0;
  for (const item of items) {
    if (group.length && (group.length >= state.limits.max_files || bytes + item.file.size > maxBytes)) {
      groups.push(group);
      group = [];
      bytes = 0;
    }
    group.push(item);
    bytes += item.file.size;
  }
  if (group.length) groups.push(group);
  return groups;
}

function newCard(file) {
  const card = element("li", "result pending");
  const figure = element("figure");
  const image = element("img");
  image.alt = "";
  image.addEventListener("error", () => figure.classList.add("no-preview"));  // the browser cannot show it either
  image.src = URL.createObjectURL(file);
  figure.append(image);
  const text = element("div", "text");
  text.append(element("p", "name", file.name), element("p", "verdict", "Judging…"));
  card.append(figure, text);
  return card;
}

function showResult(card, result) {
  card.classList.remove("pending");
  const verdict = card.querySelector(".verdict");
  if (result.error) {
    card.classList.add("error");
    card.dataset.label = "error";
    verdict.textContent = "Could not judge this file";
    card.querySelector(".text").append(element("p", "detail", result.error));
    return;
  }
  const unsure = result.label === "UNSURE";
  const fake = result.p_fake >= state.threshold;  // the side P(FAKE) leans to, also for UNSURE
  card.classList.add(unsure ? "unsure" : fake ? "fake" : "real");
  card.dataset.label = result.label;
  card.dataset.pFake = String(result.p_fake);
  verdict.textContent = unsure ? "Unsure (UNSURE)" : fake ? "AI-generated (FAKE)" : "Real photo (REAL)";
  const meter = element("div", "meter");
  meter.setAttribute("role", "img");
  meter.setAttribute("aria-label", `P(FAKE) ${(result.p_fake * 100).toFixed(1)}%`);
  const fill = element("span");
  fill.style.width = `${(result.p_fake * 100).toFixed(1)}%`;
  const mark = element("i");
  mark.style.left = `${(state.threshold * 100).toFixed(1)}%`;
  meter.append(fill, mark);
  const numbers = element("p", "score");
  numbers.append(element("strong", "p-fake", `P(FAKE) = ${result.p_fake.toFixed(3)}`),
    ` · ${(result.confidence * 100).toFixed(1)}% ${unsure ? "leaning to" : "sure it is"} ` +
    `${fake ? "AI-generated" : "real"}`);
  if (!unsure && Math.abs(result.p_fake - state.threshold) < UNCERTAIN) {
    numbers.append(element("span", "uncertain", " · uncertain: close to the threshold"));
  }
  card.querySelector(".text").append(meter, numbers);
  if (unsure) card.querySelector(".text").append(element("p", "reason", `Why: ${result.reason}`));
  if (result.heatmap_png) {
    const heatmap = element("img", "heatmap");
    heatmap.src = `data:image/png;base64,${result.heatmap_png}`;
    heatmap.alt = "where the model looked";
    card.querySelector("figure").append(heatmap);
  }
}

// The query of POST v1/predict: the heatmap and the UNSURE options the page's controls ask for.
function predictUrl() {
  const query = new URLSearchParams();
  if (byId("explain").checked) query.set("explain", "true");
  if (byId("check-stability").checked) query.set("check_stability", "true");
  const percent = parseFloat(byId("min-confidence").value);
  if (percent > 0) query.set("min_confidence", String(Math.min(percent, 100) / 100));
  const text = query.toString();
  return text ? `v1/predict?${text}` : "v1/predict";
}

async function sendGroup(group, url) {
  const form = new FormData();
  for (const item of group) form.append("files", item.file, item.file.name);
  let body, status;
  try {
    const response = await fetch(url, { method: "POST", body: form });
    status = response.status;
    body = await response.json();
  } catch (error) {
    body = { error: `the server did not answer (${error.message})` };
  }
  group.forEach((item, index) => {
    const result = body.results ? body.results[index] : { error: body.error || `HTTP ${status}` };
    showResult(item.card, result);
  });
  return group.map((item) => item.card.dataset.label);
}

async function judge(files) {
  const items = Array.from(files).map((file) => ({ file, card: newCard(file) }));
  if (!items.length) return;
  const list = byId("results");
  list.prepend(...items.map((item) => item.card));
  byId("status").textContent = `Judging ${items.length} image(s)…`;
  const url = predictUrl();
  const labels = (await Promise.all(requestsFor(items).map((group) => sendGroup(group, url)))).flat();
  const count = (label) => labels.filter((value) => value === label).length;
  byId("status").textContent = `Judged ${items.length} image(s): ${count("FAKE")} AI-generated, ` +
    `${count("REAL")} real` + (count("UNSURE") ? `, ${count("UNSURE")} unsure` : "") +
    (count("error") ? `, ${count("error")} could not be read.` : ".");
}

function setUp() {
  const drop = byId("drop");
  const picker = byId("picker");
  picker.addEventListener("change", () => {
    judge(picker.files);
    picker.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    judge(event.dataTransfer.files);
  });
  // A file dropped next to the drop zone would make the browser leave the page to show it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  loadModel();
}

setUp();
