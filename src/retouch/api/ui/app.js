// The retouch playground: plain JS, no build step, no network beyond this server's /v1 routes.
// What each model accepts comes from the `retouch` field of /v1/models entries, so the page
// carries no copy of the server's validation rules beyond the few cross-field checks below.
"use strict";

const MAX_IMAGES = 16;
const KEY_STORE = "retouch.apiKey";
const HISTORY_STORE = "retouch.prompts";
const MODEL_STORE = "retouch.model";
const FALLBACK_META = {  // a server without the `retouch` field (e.g. another OpenAI relay)
  family: "unknown", params: ["prompt", "model", "n", "size", "quality", "output_format",
    "output_compression", "background", "stream", "partial_images"],
  edits: true, max_images: MAX_IMAGES, max_prompt: 32000, mask: true, markup: false, n_max: 10,
  sizes: ["auto", "1024x1024", "1536x1024", "1024x1536"], free_size: null,
  qualities: ["auto", "low", "medium", "high"], output_formats: ["png", "jpeg", "webp"],
  compression_formats: ["jpeg", "webp"], backgrounds: ["auto", "opaque", "transparent"],
  transparent_formats: ["png", "webp"], input_fidelity: [], stream: true, partial_images_max: 3,
  square_png_only: false,
};

const $ = (id) => document.getElementById(id);
const state = {
  images: [],       // {blob, name, url, width, height, type}
  models: [],       // /v1/models entries
  run: null,        // {controller, started, timer}
  painting: null,   // {canvas, last}
  maskSize: null,   // [w, h] the mask and markup canvases were made for
};

// -- small helpers ---------------------------------------------------------------------------

function apiKey() { return localStorage.getItem(KEY_STORE) || ""; }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function fillSelect(select, values, keep = true, labels = {}) {
  const previous = select.value;
  select.replaceChildren(...values.map((v) => el("option", { value: v, text: labels[v] || v })));
  if (keep && values.includes(previous)) select.value = previous;
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function currentModel() { return state.models.find((m) => m.id === $("model").value); }

function meta() { return (currentModel() && currentModel().retouch) || FALLBACK_META; }

function takes(param) { return meta().params.includes(param); }

function seconds(ms) { return `${(ms / 1000).toFixed(1)} s`; }

async function errorMessage(response) {
  // The server's message exactly as it sent it; the raw body when it is not OpenAI's envelope.
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return body.error;
  } catch (_) { /* not JSON */ }
  return { message: text || `HTTP ${response.status} ${response.statusText}` };
}

function showError(error, status) {
  const box = $("error");
  box.replaceChildren(el("strong", { text: error.message }));
  const detail = [status ? `HTTP ${status}` : "", error.code || "", error.param ? `param: ${error.param}` : ""]
    .filter(Boolean).join(" · ");
  if (detail) box.append(el("div", { class: "hint", text: detail }));
  box.hidden = false;
}

function clearError() { $("error").hidden = true; $("error").replaceChildren(); }

// -- server: models and the API key ---------------------------------------------------------

async function loadModels() {
  $("server-status").textContent = "Loading models…";
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    $("server-status").textContent = `Cannot reach the server: ${err.message}`;
    return;
  }
  if (response.status === 401) {
    const error = await errorMessage(response);
    $("server-status").textContent = "This server needs an API key.";
    askKey(apiKey() ? `The saved key was refused: ${error.message}` : null);
    return;
  }
  if (!response.ok) {
    const error = await errorMessage(response);
    $("server-status").textContent = `Models could not be listed: ${error.message}`;
    return;
  }
  const body = await response.json();
  state.models = body.data || [];
  fillSelect($("model"), state.models.map((m) => m.id), false,
    Object.fromEntries(state.models.map((m) => [m.id, m.retouch ? `${m.id} (${m.retouch.family})` : m.id])));
  const saved = localStorage.getItem(MODEL_STORE);
  if (saved && state.models.some((m) => m.id === saved)) $("model").value = saved;
  const keyed = apiKey() ? "key saved in this browser" : "open server (no key needed)";
  $("server-status").textContent = `${state.models.length} model names · ${keyed}`;
  $("key-button").textContent = apiKey() ? "Change API key" : "API key";
  applyModel();
}

function askKey(reason) {
  $("key-reason").textContent = reason ||
    "This server needs an API key. It stays in this browser (local storage) and is sent only to this server.";
  $("key-input").value = "";
  $("key-forget").hidden = !apiKey();
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key-input").focus();
}

function onKeyDialogClose() {
  const action = $("key-dialog").returnValue;
  if (action === "save" && $("key-input").value.trim()) {
    localStorage.setItem(KEY_STORE, $("key-input").value.trim());
    loadModels();
  } else if (action === "forget") {
    localStorage.removeItem(KEY_STORE);
    loadModels();
  }
}

// -- the parameters of the chosen model -------------------------------------------------------

function applyModel() {
  const m = meta();
  const info = currentModel() && currentModel().retouch
    ? `Family ${m.family}, engine ${m.engine}. Up to ${m.max_images} image${m.max_images > 1 ? "s" : ""}` +
      `${m.mask ? ", mask" : ""}${m.generations ? ", generates from text" : ""}.`
    : "This server does not describe its models; every OpenAI parameter is offered.";
  $("model-info").textContent = state.models.length ? info : "";
  for (const field of document.querySelectorAll("#params [data-param]")) {
    const name = field.dataset.param;
    field.hidden = !takes(name) || (mode() === "generate" && name === "input_fidelity");
  }
  $("partial_images").closest(".field").hidden = !m.stream || !takes("partial_images");
  const sizes = [...m.sizes];
  if (m.free_size) sizes.push("custom");
  fillSelect($("size"), sizes, true, { custom: "custom…", auto: "auto (from the image)" });
  fillSelect($("quality"), m.qualities);
  fillSelect($("output_format"), m.output_formats);
  fillSelect($("background"), m.backgrounds);
  fillSelect($("input_fidelity"), m.input_fidelity);
  $("n").max = m.n_max;
  $("partial_images").max = m.partial_images_max;
  if (m.free_size) {
    $("size-w").step = $("size-h").step = m.free_size.multiple;
  }
  $("layer-markup").hidden = $("layer-mask").hidden = !(m.markup && m.mask);
  if (!m.markup) document.querySelector("input[name=layer][value=mask]").checked = true;
  if (m.markup && !m.mask) document.querySelector("input[name=layer][value=markup]").checked = true;
  applyLayer();
  localStorage.setItem(MODEL_STORE, $("model").value);
  validate();
}

function applyMode() {
  const generating = mode() === "generate";
  $("images-section").hidden = generating;
  $("editor-section").hidden = generating;
  applyModel();
}

function sizeValue() {
  const v = $("size").value;
  return v === "custom" ? `${$("size-w").value}x${$("size-h").value}` : v;
}

function sizeProblems(width, height) {
  const f = meta().free_size;
  const out = [];
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    return ["Width and height must be positive whole numbers."];
  }
  if (f.multiple > 1 && (width % f.multiple || height % f.multiple)) {
    out.push(`Both sides must be multiples of ${f.multiple}.`);
  }
  if (f.max_aspect && Math.max(width, height) > f.max_aspect * Math.min(width, height)) {
    out.push(`The aspect ratio must be within 1:${f.max_aspect} and ${f.max_aspect}:1.`);
  }
  const px = width * height;
  if (px < f.min_pixels || px > f.max_pixels) {
    out.push(`The size must have ${f.min_pixels.toLocaleString("en")} to ${f.max_pixels.toLocaleString("en")} pixels (this is ${px.toLocaleString("en")}).`);
  }
  if (Math.max(width, height) > f.max_edge) out.push(`Edges may be at most ${f.max_edge} pixels.`);
  return out;
}

// Whether a layer has any paint; cached per canvas until it is drawn on again, because
// validation runs on every keystroke and scanning a large image each time would be slow.
const paintCache = new Map();

function touched(canvas) { paintCache.delete(canvas.id); }

function hasPaint(canvas) {
  if (!state.maskSize || !canvas.width || !canvas.height) return false;
  if (!paintCache.has(canvas.id)) {
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = false;
    for (let i = 3; i < data.length; i += 4) if (data[i]) { painted = true; break; }
    paintCache.set(canvas.id, painted);
  }
  return paintCache.get(canvas.id);
}

// Every check here explains a combination the server would refuse, before anything is sent.
function problems() {
  const m = meta();
  const name = $("model").value || "this model";
  const out = [];
  const todo = [];
  const editing = mode() === "edit";
  if (!state.models.length) todo.push("No models are listed yet.");
  if (editing && !state.images.length) todo.push("Add at least one image.");
  if (!$("prompt").value.trim()) todo.push("Write a prompt.");
  if (!editing && m.generations === false) {
    out.push(`${name} cannot generate images from text on this server (its engine, ${m.engine}, edits existing images). Choose a generative model or switch to Edit.`);
  }
  if (editing && state.images.length > m.max_images) {
    out.push(`${name} takes at most ${m.max_images} image${m.max_images > 1 ? "s" : ""}; remove ${state.images.length - m.max_images}.`);
  }
  if (editing && m.square_png_only && state.images.length) {
    const first = state.images[0];
    if (first.type !== "image/png" || first.width !== first.height) out.push(`${name} takes one square PNG image.`);
    if (first.blob.size >= 4 * 1024 * 1024) out.push(`${name} takes images under 4 MB.`);
  }
  if ($("prompt").value.length > m.max_prompt) {
    out.push(`The prompt is ${$("prompt").value.length} characters long; ${name} takes at most ${m.max_prompt}.`);
  }
  const n = Number($("n").value);
  if (takes("n") && (!Number.isInteger(n) || n < 1 || n > m.n_max)) out.push(`n must be a whole number from 1 to ${m.n_max}.`);
  if (takes("size") && $("size").value === "custom") {
    out.push(...sizeProblems(Number($("size-w").value), Number($("size-h").value)));
  }
  const format = $("output_format").value;
  if (takes("background") && $("background").value === "transparent" && takes("output_format") &&
      !m.transparent_formats.includes(format)) {
    out.push(`A transparent background needs ${m.transparent_formats.join(" or ")} output, not ${format}.`);
  }
  const partials = Number($("partial_images").value);
  if (m.stream && takes("partial_images") && (!Number.isInteger(partials) || partials < 0 || partials > m.partial_images_max)) {
    out.push(`Partial images must be from 0 to ${m.partial_images_max}.`);
  }
  if (editing && state.images.length) {
    const masked = hasPaint($("mask-canvas"));
    const marked = hasPaint($("markup-canvas"));
    if (masked && !m.mask) out.push(`${name} does not take a mask; clear it.`);
    if (marked && !m.markup) out.push(`${name} does not take markup; clear it.`);
    if (masked && marked) out.push("A mask and markup cannot be sent together; clear one of them.");
  }
  return { blocking: out, todo };
}

function validate() {
  const { blocking, todo } = problems();
  const compression = $("output_compression");
  const compressible = meta().compression_formats.includes($("output_format").value);
  compression.disabled = !compressible;
  $("compression-value").textContent = compressible ? compression.value : "100";
  compression.closest(".field").title = compressible ? "" : "Compression applies only to JPEG and WebP.";
  $("free-size").hidden = $("size").value !== "custom";
  $("problems").replaceChildren(
    ...blocking.map((t) => el("li", { text: t })),
    ...todo.map((t) => el("li", { class: "hint", text: t })),
  );
  $("run").disabled = Boolean(blocking.length || todo.length || state.run);
  $("run").setAttribute("aria-describedby", "problems");
  $("image-count").textContent = state.images.length ? `(${state.images.length} of ${meta().max_images})` : "";
}

// -- images: add, reorder, remove ------------------------------------------------------------

async function addFiles(files) {
  clearError();
  const list = [...files].filter((f) => f.type.startsWith("image/") || !f.type);
  const room = MAX_IMAGES - state.images.length;
  if (list.length > room) {
    showError({ message: `At most ${MAX_IMAGES} images: ${list.length - room} were not added.` });
  }
  for (const file of list.slice(0, Math.max(0, room))) {
    const url = URL.createObjectURL(file);
    try {
      const img = await loadImage(url);
      state.images.push({ blob: file, name: file.name || "pasted.png", url, type: file.type,
                          width: img.naturalWidth, height: img.naturalHeight });
    } catch (_) {
      URL.revokeObjectURL(url);
      showError({ message: `${file.name || "The pasted file"} is not an image this browser can read.` });
    }
  }
  renderImages();
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = url;
  });
}

function moveImage(index, delta) {
  const to = index + delta;
  if (to < 0 || to >= state.images.length) return;
  const [item] = state.images.splice(index, 1);
  state.images.splice(to, 0, item);
  renderImages(to, delta < 0 ? "earlier" : "later");
}

function removeImage(index) {
  state.images.splice(index, 1);
  renderImages(Math.min(index, state.images.length - 1), "remove");
}

function renderImages(focusIndex = -1, focusWhich = "") {
  const thumbs = state.images.map((image, i) => {
    const li = el("li", { draggable: "true", "data-index": String(i) },
      el("img", { src: image.url, alt: `Image ${i + 1}: ${image.name}` }),
      el("span", { class: "meta", text: `${i === 0 ? "1 (mask) · " : `${i + 1} · `}${image.width}×${image.height}` }),
      el("span", { class: "tbtns" },
        el("button", { type: "button", "aria-label": `Move image ${i + 1} earlier`, "data-act": "earlier", text: "◀", onclick: () => moveImage(i, -1) }),
        el("button", { type: "button", "aria-label": `Move image ${i + 1} later`, "data-act": "later", text: "▶", onclick: () => moveImage(i, 1) }),
        el("button", { type: "button", "aria-label": `Remove image ${i + 1}`, "data-act": "remove", text: "✕", onclick: () => removeImage(i) })));
    li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/x-retouch-index", String(i)));
    li.addEventListener("dragover", (e) => { if (e.dataTransfer.types.includes("text/x-retouch-index")) e.preventDefault(); });
    li.addEventListener("drop", (e) => {
      const from = Number(e.dataTransfer.getData("text/x-retouch-index"));
      if (Number.isNaN(from) || !e.dataTransfer.types.includes("text/x-retouch-index")) return;
      e.preventDefault();
      e.stopPropagation();
      const [item] = state.images.splice(from, 1);
      state.images.splice(i, 0, item);
      renderImages();
    });
    return li;
  });
  $("thumbs").replaceChildren(...thumbs);
  if (focusIndex >= 0 && thumbs[focusIndex]) {
    const button = thumbs[focusIndex].querySelector(`[data-act=${focusWhich}]`) || thumbs[focusIndex].querySelector("button");
    button.focus();
  }
  setupCanvas();
  validate();
}

// -- mask and markup painting -----------------------------------------------------------------

function setupCanvas() {
  const first = state.images[0];
  const img = $("base-image");
  const canvases = [$("mask-canvas"), $("markup-canvas")];
  $("canvas-empty").hidden = Boolean(first);
  img.hidden = !first;
  for (const c of canvases) c.hidden = !first;
  if (!first) { state.maskSize = null; return; }
  if (img.getAttribute("src") !== first.url) img.src = first.url;
  const size = [first.width, first.height];
  if (!state.maskSize || state.maskSize[0] !== size[0] || state.maskSize[1] !== size[1]) {
    for (const c of canvases) { c.width = size[0]; c.height = size[1]; touched(c); }  // resets the paint
    state.maskSize = size;
  }
  applyLayer();
}

function layer() { return document.querySelector("input[name=layer]:checked").value; }

function applyLayer() {
  const markup = layer() === "markup";
  $("mask-canvas").classList.toggle("inactive", markup);
  $("markup-canvas").classList.toggle("inactive", !markup);
  $("markup-color").hidden = !markup;
  $("editor-title").firstChild.textContent = markup ? "Markup " : "Mask ";
  applyShow();
}

function activeCanvas() { return layer() === "markup" ? $("markup-canvas") : $("mask-canvas"); }

function applyShow() {
  const visible = $("mask-show").checked;
  $("mask-canvas").style.visibility = visible ? "visible" : "hidden";
  $("markup-canvas").style.visibility = visible || layer() === "markup" ? "visible" : "hidden";
}

function canvasPoint(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const scale = canvas.width / rect.width;
  return { x: (event.clientX - rect.left) * scale, y: (event.clientY - rect.top) * scale, scale };
}

function stroke(canvas, from, to) {
  const g = canvas.getContext("2d");
  const eraser = document.querySelector("input[name=tool]:checked").value === "eraser";
  g.globalCompositeOperation = eraser ? "destination-out" : "source-over";
  g.strokeStyle = g.fillStyle = canvas.id === "markup-canvas" ? $("markup-color").value : "#ff0050";
  g.lineWidth = Number($("brush-size").value) * to.scale;
  g.lineCap = g.lineJoin = "round";
  g.beginPath();
  g.moveTo(from.x, from.y);
  g.lineTo(to.x + 0.01, to.y);
  g.stroke();
  touched(canvas);
  g.globalCompositeOperation = "source-over";
}

function onPointerDown(event) {
  const canvas = event.currentTarget;
  if (canvas !== activeCanvas() || event.button > 0) return;
  canvas.setPointerCapture(event.pointerId);
  const p = canvasPoint(canvas, event);
  state.painting = { canvas, last: p };
  stroke(canvas, p, p);
  event.preventDefault();
}

function onPointerMove(event) {
  if (!state.painting || state.painting.canvas !== event.currentTarget) return;
  const p = canvasPoint(state.painting.canvas, event);
  stroke(state.painting.canvas, state.painting.last, p);
  state.painting.last = p;
}

function onPointerUp() {
  if (!state.painting) return;
  state.painting = null;
  validate();
}

function invertLayer() {
  const canvas = activeCanvas();
  const copy = el("canvas", { width: canvas.width, height: canvas.height });
  copy.getContext("2d").drawImage(canvas, 0, 0);
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = canvas.id === "markup-canvas" ? $("markup-color").value : "#ff0050";
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.globalCompositeOperation = "destination-out";
  g.drawImage(copy, 0, 0);
  g.globalCompositeOperation = "source-over";
  touched(canvas);
  validate();
}

function clearLayer() {
  const canvas = activeCanvas();
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  touched(canvas);
  validate();
}

function toBlob(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// OpenAI's convention: opaque where the image stays, alpha 0 where it is edited; same size.
function maskBlob() {
  const painted = $("mask-canvas");
  const out = el("canvas", { width: painted.width, height: painted.height });
  const g = out.getContext("2d");
  g.fillStyle = "#000";
  g.fillRect(0, 0, out.width, out.height);
  g.globalCompositeOperation = "destination-out";
  g.drawImage(painted, 0, 0);
  return toBlob(out);
}

// -- running a request ------------------------------------------------------------------------

function commonFields() {
  const m = meta();
  const fields = { model: $("model").value, prompt: $("prompt").value };
  if (takes("n")) fields.n = String(Number($("n").value));
  if (takes("size")) fields.size = sizeValue();
  if (takes("quality")) fields.quality = $("quality").value;
  if (takes("output_format")) fields.output_format = $("output_format").value;
  if (takes("output_compression") && m.compression_formats.includes($("output_format").value)) {
    fields.output_compression = String($("output_compression").value);
  }
  if (takes("background")) fields.background = $("background").value;
  if (m.stream) {
    fields.stream = "true";
    if (takes("partial_images")) fields.partial_images = String(Number($("partial_images").value));
  } else if (m.response_formats && m.response_formats.includes("b64_json") && takes("response_format")) {
    fields.response_format = "b64_json";
  }
  return fields;
}

async function buildRequest() {
  const fields = commonFields();
  if (mode() === "generate") {
    const body = { ...fields };
    for (const k of ["n", "partial_images", "output_compression"]) if (k in body) body[k] = Number(body[k]);
    if ("stream" in body) body.stream = true;
    return { url: "/v1/images/generations", init: { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) } };
  }
  if (takes("input_fidelity") && meta().input_fidelity.length) fields.input_fidelity = $("input_fidelity").value;
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  for (const image of state.images) form.append("image[]", image.blob, image.name);
  if (hasPaint($("mask-canvas"))) form.append("mask", await maskBlob(), "mask.png");
  if (hasPaint($("markup-canvas"))) form.append("markup", await toBlob($("markup-canvas")), "markup.png");
  return { url: "/v1/images/edits", init: { method: "POST", headers: headers(), body: form } };
}

function rememberPrompt(prompt) {
  const list = JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]").filter((p) => p !== prompt);
  list.unshift(prompt);
  localStorage.setItem(HISTORY_STORE, JSON.stringify(list.slice(0, 25)));
  renderHistory();
}

function renderHistory() {
  const list = JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]");
  $("history").replaceChildren(el("option", { value: "", text: list.length ? "Recent prompts…" : "No prompts yet" }),
    ...list.map((p, i) => el("option", { value: String(i), text: p.length > 60 ? `${p.slice(0, 60)}…` : p })));
}

function progressText(extra = "") {
  const r = state.run;
  if (!r) return;
  const done = r.completed ? ` · ${r.completed} of ${r.expected} done` : "";
  $("progress-text").textContent = `${r.label}: ${seconds(performance.now() - r.started)} elapsed · ${r.partials} partial image${r.partials === 1 ? "" : "s"}${done}${extra}`;
}

async function run() {
  validate();
  if ($("run").disabled) return;
  clearError();
  const prompt = $("prompt").value;
  rememberPrompt(prompt);
  const request = await buildRequest();
  const controller = new AbortController();
  const before = mode() === "edit" && state.images.length ? state.images[0].url : null;
  state.run = { controller, started: performance.now(), partials: 0, completed: 0,
                expected: Number($("n").value) || 1, label: `Running ${$("model").value}`, before, prompt };
  state.run.timer = setInterval(() => progressText(), 100);
  $("progress").hidden = false;
  $("partials").replaceChildren();
  $("cancel").hidden = false;
  validate();
  progressText();
  try {
    const response = await fetch(request.url, { ...request.init, signal: controller.signal });
    if (!response.ok) {
      const error = await errorMessage(response);
      state.run.failed = true;
      showError(error, response.status);
      if (response.status === 401) askKey(`The server refused the key: ${error.message}`);
      return;
    }
    const type = response.headers.get("content-type") || "";
    if (type.startsWith("text/event-stream")) {
      for await (const event of readEvents(response)) onEvent(event);
    } else {
      const body = await response.json();
      (body.data || []).forEach((item, i) => addResult({ ...body, ...item, index: i }));
    }
  } catch (err) {
    state.run.failed = true;
    if (err.name === "AbortError") showError({ message: "Cancelled." });
    else showError({ message: `The request failed: ${err.message}` });
  } finally {
    clearInterval(state.run.timer);
    progressText(state.run.failed ? " · failed: the message is under the Run button" : " · finished");
    state.run = null;
    $("cancel").hidden = true;
    validate();
  }
}

// Server-sent events from fetch's stream: blocks separated by a blank line, `event:` and
// `data:` lines, `:` comments (keep-alive pings) ignored.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
  }
}

function onEvent({ name, data }) {
  const type = data.type || name;
  if (type === "error" || data.error) {
    state.run.failed = true;
    showError(data.error || { message: "The stream ended with an error." });
  } else if (type.endsWith(".partial_image")) {
    state.run.partials += 1;
    const at = seconds(performance.now() - state.run.started);
    $("partials").append(el("li", {},
      el("img", { src: `data:image/${data.output_format || "png"};base64,${data.b64_json}`, alt: `Partial image ${data.partial_image_index + 1}` }),
      el("span", { text: `partial ${data.partial_image_index + 1} · ${at}` })));
    progressText();
  } else if (type.endsWith(".completed")) {
    state.run.completed += 1;
    addResult({ ...data, index: state.run.completed - 1 });
    progressText();
  }
}

function b64Blob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function addResult(item) {
  const r = state.run;
  const format = item.output_format || "png";
  const mime = `image/${format}`;
  const url = item.b64_json ? URL.createObjectURL(b64Blob(item.b64_json, mime)) : item.url;
  const elapsed = seconds(performance.now() - r.started);
  const after = el("img", { src: url, alt: `Result ${item.index + 1} for: ${r.prompt}`, class: "after" });
  let view;
  if (r.before) {
    const slider = el("input", { type: "range", min: "0", max: "100", value: "50", "aria-label": `Before and after, result ${item.index + 1}` });
    const divider = el("div", { class: "divider" });
    const wrap = el("div", { class: "after-wrap" }, after);
    const beforeImg = el("img", { src: r.before, alt: "Before", class: "before" });
    const compare = el("div", { class: "compare" }, wrap, beforeImg, divider);
    const apply = () => {
      beforeImg.style.clipPath = `inset(0 ${100 - slider.value}% 0 0)`;
      divider.style.left = `${slider.value}%`;
    };
    slider.addEventListener("input", apply);
    apply();
    view = el("div", {}, compare, el("div", { class: "compare-label" }, el("span", { text: "◀ before" }), el("span", { text: "after ▶" })), slider);
  } else {
    view = el("div", { class: "compare" }, after);
  }
  const usage = item.usage;
  const rows = [["size", item.size], ["quality", item.quality], ["format", item.output_format],
    ["background", item.background], ["elapsed", elapsed]];
  if (usage) {
    const details = usage.input_tokens_details || {};
    rows.push(["tokens", `${usage.total_tokens} total: ${usage.input_tokens} in (${details.text_tokens ?? "?"} text, ${details.image_tokens ?? "?"} image), ${usage.output_tokens} out`]);
  }
  const dl = el("dl", {}, ...rows.filter(([, v]) => v !== undefined && v !== null).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  const name = `retouch-${Date.now()}-${item.index + 1}.${format === "jpeg" ? "jpg" : format}`;
  const download = el("a", { class: "download", href: url, download: name, text: `Download ${format.toUpperCase()}` });
  const card = el("article", { class: "card", "aria-label": `Result ${item.index + 1}` }, view, dl, download);
  $("gallery").prepend(card);
}

// -- wiring -----------------------------------------------------------------------------------

function init() {
  renderHistory();
  $("key-button").addEventListener("click", () => askKey(apiKey() ? "Change or forget the key kept in this browser." : null));
  $("key-dialog").addEventListener("close", onKeyDialogClose);
  $("model").addEventListener("change", applyModel);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", applyMode);
  for (const radio of document.querySelectorAll("input[name=layer]")) radio.addEventListener("change", applyLayer);
  $("params").addEventListener("input", validate);
  $("params").addEventListener("change", validate);
  $("prompt").addEventListener("input", validate);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  $("history").addEventListener("change", () => {
    const list = JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]");
    if ($("history").value !== "") $("prompt").value = list[Number($("history").value)];
    $("history").value = "";
    validate();
  });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", () => state.run && state.run.controller.abort());
  const drop = $("dropzone");
  drop.addEventListener("click", () => $("file-input").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file-input").click(); } });
  $("file-input").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  for (const target of [drop, $("canvas-wrap")]) {
    target.addEventListener("dragover", (e) => { if (e.dataTransfer.types.includes("Files")) { e.preventDefault(); drop.classList.add("over"); } });
    target.addEventListener("dragleave", () => drop.classList.remove("over"));
    target.addEventListener("drop", (e) => {
      if (!e.dataTransfer.files.length) return;
      e.preventDefault();
      drop.classList.remove("over");
      addFiles(e.dataTransfer.files);
    });
  }
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
    if (files.length && mode() === "edit") { e.preventDefault(); addFiles(files); }
  });
  for (const canvas of [$("mask-canvas"), $("markup-canvas")]) {
    canvas.getContext("2d", { willReadFrequently: true });  // hasPaint reads the pixels back
    canvas.addEventListener("pointerdown", onPointerDown);
    canvas.addEventListener("pointermove", onPointerMove);
    canvas.addEventListener("pointerup", onPointerUp);
    canvas.addEventListener("pointercancel", onPointerUp);
  }
  $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });
  $("mask-invert").addEventListener("click", invertLayer);
  $("mask-clear").addEventListener("click", clearLayer);
  $("mask-show").addEventListener("change", applyShow);
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea, select, dialog") || e.ctrlKey || e.metaKey || e.altKey) return;
    const size = $("brush-size");
    if (e.key === "b") document.querySelector("input[name=tool][value=brush]").checked = true;
    else if (e.key === "e") document.querySelector("input[name=tool][value=eraser]").checked = true;
    else if (e.key === "[" || e.key === "]") {
      size.value = String(Number(size.value) + (e.key === "]" ? 5 : -5));
      $("brush-size-value").textContent = size.value;
    }
  });
  applyMode();
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
