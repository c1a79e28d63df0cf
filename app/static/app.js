// The page talks only to the API that serves it (same origin, relative URLs): no external requests.
"use strict";

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 200;
const KEY_STORE = "vae-api-key";

// ---------------------------------------------------------------- API

class ApiError extends Error {}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// FastAPI answers `{"detail": "..."}`, or a list of {loc, msg} for request validation errors.
function describe(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`)
      .join("; ");
  }
  return JSON.stringify(detail);
}

async function errorText(res) {
  let detail = "";
  try {
    const body = await res.json();
    detail = describe(body.detail);
  } catch {
    detail = res.statusText;
  }
  if (res.status === 401) {
    $("key-box").open = true;
    return `${detail || "unauthorised"}. Enter the API key at the top of the page.`;
  }
  if (res.status === 413) return `Too large: ${detail}`;
  if (res.status === 503) return `The server is busy, try again in a moment (${detail}).`;
  return detail || `HTTP ${res.status}`;
}

async function api(path, { json, form, accept = "application/json", signal, method } = {}) {
  const headers = { Accept: accept, ...authHeaders() };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let res;
  try {
    res = await fetch(path, { method: method || (body ? "POST" : "GET"), headers, body, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Could not reach the server.");
  }
  if (!res.ok) throw new ApiError(await errorText(res));
  return res;
}

const png = (b64) => `data:image/png;base64,${b64}`;

function say(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function show(img, src, alt) {
  img.src = src;
  img.alt = alt;
  img.hidden = false;
  const ph = img.nextElementSibling;
  if (ph && ph.classList.contains("placeholder")) ph.hidden = true;
}

function hide(img) {
  img.hidden = true;
  img.removeAttribute("src");
  const ph = img.nextElementSibling;
  if (ph && ph.classList.contains("placeholder")) ph.hidden = false;
}

// ---------------------------------------------------------------- drawing pad

const pad = $("pad");
const ctx = pad.getContext("2d");
let hasInk = false;
let last = null;
let debounce = 0;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [((ev.clientX - r.left) * pad.width) / r.width, ((ev.clientY - r.top) * pad.height) / r.height];
}

function strokeTo(p) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...(last || p));
  ctx.lineTo(...p);
  ctx.stroke();
  last = p;
  hasInk = true;
}

function scheduleReconstruct(delay = DEBOUNCE_MS) {
  clearTimeout(debounce);
  debounce = setTimeout(sendPad, delay);
}

pad.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0) return;
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  last = null;
  strokeTo(padPoint(ev));
  scheduleReconstruct();
});
pad.addEventListener("pointermove", (ev) => {
  if (last === null) return;
  for (const e of ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev]) strokeTo(padPoint(e));
  scheduleReconstruct();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (last === null) return;
    last = null;
    scheduleReconstruct(0);
  });
}

$("clear").addEventListener("click", () => {
  clearTimeout(debounce);
  if (inflight) inflight.abort();
  clearPad();
  resetSeen();
  $("start-example").value = "";
  say("draw-msg", "Cleared.");
});

function sendPad() {
  if (!hasInk) return;
  pad.toBlob((blob) => reconstruct(blob, "drawing.png", "your drawing"), "image/png");
}

$("upload").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  if (file) reconstruct(file, file.name, `“${file.name}”`);
  ev.target.value = "";
});

$("start-example").addEventListener("change", async (ev) => {
  const ex = examples.find((e) => e.id === ev.target.value);
  if (!ex) return;
  try {
    const blob = await (await api(ex.url, { accept: "image/png" })).blob();
    const bitmap = await createImageBitmap(blob);
    clearPad();
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(bitmap, 0, 0, pad.width, pad.height);
    hasInk = true;
    clearTimeout(debounce);
    pad.toBlob((b) => reconstruct(b, "example.png", `example digit ${ex.label}`), "image/png");
  } catch (err) {
    say("draw-msg", `Could not load that example: ${err.message}`, true);
  }
});

// ---------------------------------------------------------------- reconstruction

let inflight = null;
let current = null; // {mu, logvar, input} of the digit on show

function resetSeen() {
  current = null;
  hide($("input-img"));
  hide($("recon-img"));
  $("elbo").textContent = "";
  $("not-digit").hidden = true;
  $("latent-chart").replaceChildren();
  $("use-a").disabled = $("use-b").disabled = true;
}

async function reconstruct(blob, filename, what) {
  if (inflight) inflight.abort();
  const ctl = new AbortController();
  inflight = ctl;
  const form = new FormData();
  form.append("file", blob, filename);
  say("draw-msg", `Reconstructing ${what}…`);
  try {
    const res = await api("reconstruct", { form, signal: ctl.signal });
    const data = await res.json();
    if (ctl.signal.aborted) return;
    current = { mu: data.mu, logvar: data.logvar, input: data.input };
    show($("input-img"), png(data.input), `The 32×32 input the model saw from ${what}`);
    show($("recon-img"), png(data.reconstruction), `The model's reconstruction of ${what}`);
    $("elbo").textContent = `−ELBO ${data.neg_elbo.toFixed(1)} nats (lower is a better fit)`;
    showTypicality(data);
    drawLatents(data.mu, data.logvar);
    $("use-a").disabled = $("use-b").disabled = false;
    say("draw-msg", `Reconstructed ${what}.`);
  } catch (err) {
    if (err.name === "AbortError") return;
    say("draw-msg", `Could not use ${what}: ${err.message}`, true);
  } finally {
    if (inflight === ctl) inflight = null;
  }
}

// `typicality`: the share of real held-out digits that look less digit-like than this input
// (null for a checkpoint without the score); `is_digit`: typicality >= VAE_DIGIT_THRESHOLD.
function showTypicality(data) {
  const note = $("not-digit");
  if (data.typicality === null || data.typicality === undefined) {
    note.hidden = true;
    return;
  }
  const pct = (100 * data.typicality).toFixed(data.typicality < 0.01 ? 2 : 0);
  $("elbo").textContent += ` · typicality ${data.typicality.toFixed(3)}`;
  if (data.is_digit === false) {
    note.textContent =
      `This does not look like a digit (typicality ${data.typicality.toFixed(4)}: ` +
      `only ${pct} % of real digits look less like one), so its reconstruction is the ` +
      "nearest digit the model knows, not a copy.";
    note.hidden = false;
  } else {
    note.hidden = true;
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function drawLatents(mu, logvar) {
  const sigma = logvar.map((lv) => Math.exp(0.5 * lv));
  const reach = Math.max(2, ...mu.map((m, i) => Math.abs(m) + sigma[i]));
  const n = mu.length;
  const W = Math.max(240, Math.round($("latent-chart").clientWidth) || 320); // 1 unit = 1 px
  const H = 140;
  const pad = 4;
  const step = (W - 2 * pad) / n;
  const top = 18; // room for the axis label above the plot
  const mid = (top + H - pad) / 2;
  const y = (v) => mid - (v / reach) * (mid - top);
  const svg = svgEl("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": `${n} latent means with one-sigma whiskers; largest |μ| ${Math.max(...mu.map(Math.abs)).toFixed(2)}`,
  });
  for (const v of [-1, 1]) {
    svg.append(svgEl("line", { x1: 0, x2: W, y1: y(v), y2: y(v), class: "grid" }));
  }
  svg.append(svgEl("line", { x1: 0, x2: W, y1: y(0), y2: y(0), class: "axis" }));
  mu.forEach((m, i) => {
    const cx = pad + step * (i + 0.5);
    const bw = Math.max(1, step * 0.6);
    const bar = svgEl("rect", {
      x: cx - bw / 2,
      width: bw,
      y: Math.min(y(0), y(m)),
      height: Math.max(0.5, Math.abs(y(m) - y(0))),
      class: m >= 0 ? "bar pos" : "bar neg",
    });
    const title = svgEl("title", {});
    title.textContent = `z${i}: μ ${m.toFixed(2)}, σ ${sigma[i].toFixed(2)}`;
    bar.append(title);
    svg.append(bar);
    svg.append(svgEl("line", { x1: cx, x2: cx, y1: y(m - sigma[i]), y2: y(m + sigma[i]), class: "whisker" }));
  });
  const label = svgEl("text", { x: W - pad, y: 12, class: "tick" });
  label.textContent = `axis ±${reach.toFixed(1)}`;
  svg.append(label);
  $("latent-chart").replaceChildren(svg);
}

// ---------------------------------------------------------------- sampling

let lastSeed = null;

async function sample(seed) {
  const n = Number($("n").value);
  const temperature = Number($("temperature").value);
  const digit = $("digit").value;
  const body = { n, temperature };
  if (digit !== "") body.digit = Number(digit);
  if (seed !== null && seed !== "") body.seed = Number(seed);
  const btn = $("sample-btn");
  btn.disabled = true;
  say("sample-msg", "Sampling…");
  try {
    const res = await api("sample", { json: body, accept: "image/png" });
    const blob = await res.blob();
    lastSeed = res.headers.get("X-Seed") ?? body.seed ?? null;
    const img = $("grid-img");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    const what = digit === "" ? "sampled digits" : `samples of the digit ${digit}`;
    show(img, URL.createObjectURL(blob), `${n} ${what}, seed ${lastSeed}, temperature ${temperature}`);
    const which = digit === "" ? "" : ` of ${digit}`;
    $("grid-cap").textContent = `${n} samples${which} · seed ${lastSeed} · temperature ${temperature}`;
    $("same-seed").disabled = lastSeed === null;
    say("sample-msg", "");
  } catch (err) {
    say("sample-msg", `Sampling failed: ${err.message}`, true);
  } finally {
    btn.disabled = false;
  }
}

$("sample-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sample($("seed").value);
});
$("same-seed").addEventListener("click", () => {
  $("seed").value = lastSeed;
  sample(lastSeed);
});

// ---------------------------------------------------------------- interpolation

let examples = [];
const ends = { a: null, b: null }; // a saved drawing: {mu, input}

function fillExampleSelect(select, withDrawing) {
  const keep = select.value;
  select.replaceChildren();
  if (withDrawing) {
    const opt = new Option("Saved drawing", "drawing");
    opt.disabled = true;
    select.append(opt);
  }
  const byLabel = new Map();
  for (const ex of examples) {
    if (!byLabel.has(ex.label)) byLabel.set(ex.label, []);
    byLabel.get(ex.label).push(ex);
  }
  for (const [label, list] of [...byLabel].sort((p, q) => p[0] - q[0])) {
    const group = document.createElement("optgroup");
    group.label = `Digit ${label}`;
    list.forEach((ex, i) => group.append(new Option(`Example ${label} #${i + 1}`, ex.id)));
    select.append(group);
  }
  if (keep) select.value = keep;
}

async function loadExamples() {
  try {
    const data = await (await api("examples")).json();
    examples = data.examples || [];
    if ($("interp-msg").classList.contains("error")) say("interp-msg", "");
  } catch (err) {
    say("interp-msg", `Could not list the example digits: ${err.message}`, true);
    examples = [];
  }
  const start = $("start-example");
  fillExampleSelect(start, false);
  start.prepend(new Option("Choose…", ""));
  start.value = "";
  start.disabled = examples.length === 0;
  for (const end of ["a", "b"]) fillExampleSelect($(`end-${end}`), true);
  const pick = (label, fallback) => examples.find((e) => e.label === label) || examples[fallback];
  if (examples.length) {
    $("end-a").value = (pick(3, 0) || {}).id;
    $("end-b").value = (pick(8, examples.length - 1) || {}).id;
  }
  updateThumbs();
}

// Example PNGs are fetched (not linked) so that the API key, when one is set, goes with them.
const exampleUrls = new Map();
function exampleUrl(ex) {
  if (!exampleUrls.has(ex.id)) {
    const url = api(ex.url, { accept: "image/png" })
      .then((res) => res.blob())
      .then((blob) => URL.createObjectURL(blob));
    url.catch(() => exampleUrls.delete(ex.id));
    exampleUrls.set(ex.id, url);
  }
  return exampleUrls.get(ex.id);
}

function updateThumbs() {
  for (const end of ["a", "b"]) {
    const select = $(`end-${end}`);
    const thumb = $(`thumb-${end}`);
    if (select.value === "drawing" && ends[end]) {
      show(thumb, png(ends[end].input), `Saved drawing ${end.toUpperCase()}`);
    } else {
      const ex = examples.find((e) => e.id === select.value);
      if (!ex) hide(thumb);
      else exampleUrl(ex).then((url) => show(thumb, url, `Example digit ${ex.label}`), () => hide(thumb));
    }
  }
}

for (const end of ["a", "b"]) {
  $(`end-${end}`).addEventListener("change", updateThumbs);
  $(`use-${end}`).addEventListener("click", () => {
    if (!current) return;
    ends[end] = { mu: current.mu, input: current.input };
    const select = $(`end-${end}`);
    select.options[0].disabled = false;
    select.value = "drawing";
    updateThumbs();
    say("interp-msg", `Saved this digit as ${end.toUpperCase()}.`);
  });
}

function endpoint(end) {
  const value = $(`end-${end}`).value;
  if (value === "drawing") return { z: ends[end].mu };
  if (value) return { example: value };
  throw new ApiError(`Choose a digit for ${end.toUpperCase()}.`);
}

$("interp-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const btn = $("interp-btn");
  btn.disabled = true;
  say("interp-msg", "Interpolating…");
  try {
    const body = { start: endpoint("a"), end: endpoint("b"), steps: Number($("steps").value) };
    const data = await (await api("interpolate", { json: body })).json();
    const strip = $("strip");
    strip.replaceChildren(
      ...data.images.map((b64, i) => {
        const img = new Image(48, 48);
        img.className = "px";
        img.src = png(b64);
        img.alt = `step ${i + 1} of ${data.images.length}`;
        img.setAttribute("role", "listitem");
        return img;
      }),
    );
    say("interp-msg", "");
  } catch (err) {
    say("interp-msg", `Interpolation failed: ${err.message}`, true);
  } finally {
    btn.disabled = false;
  }
});

// ---------------------------------------------------------------- start-up

$("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", (ev) => {
  const key = ev.target.value.trim();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  loadExamples();
  loadPrior();
});

// Says which prior the samples come from: the encoder was trained against N(0, 1), but a
// checkpoint may serve a learned mixture instead (/model's prior).
function priorNote(prior) {
  if (prior.name !== "mixture") return "The prior, which samples come from, is N(0,\u00a01).";
  const perDigit = prior.digits?.length && prior.class_components;
  return "The encoder was trained against N(0,\u00a01); samples come from a learned prior, " +
    `a mixture of ${prior.components} Gaussians fitted to the training digits' codes` +
    (perDigit ? `, ${prior.class_components} for each digit.` : ".");
}

// The digit picker only offers what the served prior can draw (/model lists its digits).
async function loadPrior() {
  const select = $("digit");
  try {
    const info = await (await api("model")).json();
    const digits = new Set(((info.prior || {}).digits || []).map(String));
    for (const option of select.options) option.disabled = option.value !== "" && !digits.has(option.value);
    select.disabled = digits.size === 0;
    select.title = digits.size ? "" : "this model's prior cannot choose a digit";
    if (select.selectedOptions[0]?.disabled) select.value = "";
    $("prior-note").textContent = priorNote(info.prior || {});
  } catch {
    // /model unreachable (e.g. the key is missing): leave the picker; the API says what is wrong.
  }
}

clearPad();
loadExamples();
loadPrior();
