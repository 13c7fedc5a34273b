// SCDM studio: paints class ids (never colours) at the model's label resolution.
// State: `ids` (Int32, -1 = unknown), `strokes` (RGB guide for SDEdit), `mask` (1 = regenerate).
"use strict";

const UNKNOWN = -1;
const S = {
  info: null, size: 0, ids: null, strokes: null, mask: null, current: 0,
  tool: "brush", undo: [], source: null, drawing: false, last: null, anchor: null,
  view: "labels",
};
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const resp = await fetch(path, opts);
  const data = await resp.json();
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function showError(msg) { $("error").textContent = msg || ""; }
function showMessage(msg) { $("message").textContent = msg || ""; }

// ------------------------------------------------------------------ palette

function buildPalette() {
  const ul = $("palette");
  ul.innerHTML = "";
  const q = $("search").value.trim().toLowerCase();
  for (const c of S.info.classes) {
    if (q && !c.name.toLowerCase().includes(q) && String(c.id) !== q) continue;
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.className = "class-item" + (c.id === S.current ? " active" : "");
    li.innerHTML = `<span class="swatch" style="background:rgb(${c.color})"></span>` +
      `<span>${c.id} ${c.name}</span>`;
    li.addEventListener("click", () => selectClass(c.id));
    ul.appendChild(li);
  }
}

function selectClass(id) {
  S.current = id;
  if (S.tool === "eraser" || S.tool === "select" || S.tool === "maskbrush" ||
      S.tool === "strokes") setTool("brush");
  const c = S.info.classes[id];
  $("current-class").textContent = `class: ${c.id} ${c.name}`;
  $("stroke-color").value = "#" + c.color.map((v) => v.toString(16).padStart(2, "0")).join("");
  buildPalette();
}

function setTool(tool) {
  S.tool = tool;
  for (const b of document.querySelectorAll("button.tool")) {
    b.classList.toggle("active", b.id === "tool-" + tool);
  }
  S.view = tool === "strokes" ? "strokes" : "labels";
  render();
}

// ------------------------------------------------------------------ drawing

function colorOf(id) {
  return id < 0 ? null : S.info.classes[id].color;
}

function render() {
  const n = S.size, cv = $("canvas"), ctx = cv.getContext("2d");
  const img = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) {
    let r, g, b;
    if (S.view === "strokes") {
      r = S.strokes[3 * i]; g = S.strokes[3 * i + 1]; b = S.strokes[3 * i + 2];
    } else {
      const c = colorOf(S.ids[i]);
      if (c === null) {  // unknown: a grey checkerboard, unlike any class colour
        const y = Math.floor(i / n), x = i % n;
        r = g = b = ((x + y) & 1) ? 200 : 150;
      } else { [r, g, b] = c; }
    }
    if (S.mask[i]) { r = (r + 255) >> 1; g = g >> 1; b = b >> 1; }  // red tint = region
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  refreshDownloads();
}

function pixelAt(ev) {
  const rect = $("canvas").getBoundingClientRect();
  const x = Math.floor((ev.clientX - rect.left) / rect.width * S.size);
  const y = Math.floor((ev.clientY - rect.top) / rect.height * S.size);
  return [Math.min(S.size - 1, Math.max(0, x)), Math.min(S.size - 1, Math.max(0, y))];
}

function pushUndo() {
  S.undo.push({ids: S.ids.slice(), strokes: S.strokes.slice(), mask: S.mask.slice()});
  if (S.undo.length > 100) S.undo.shift();
}

function undo() {
  const st = S.undo.pop();
  if (!st) return;
  S.ids = st.ids; S.strokes = st.strokes; S.mask = st.mask;
  render();
}

function stamp(cx, cy) {
  const d = parseInt($("brush-size").value, 10), n = S.size;
  const r = d / 2, lo = -Math.floor((d - 1) / 2), hi = Math.floor(d / 2);
  const rgb = hexToRgb($("stroke-color").value);
  for (let dy = lo; dy <= hi; dy++) {
    for (let dx = lo; dx <= hi; dx++) {
      if (d > 2 && (dx - 0.5 * (hi + lo)) ** 2 + (dy - 0.5 * (hi + lo)) ** 2 > r * r) continue;
      const x = cx + dx, y = cy + dy;
      if (x < 0 || y < 0 || x >= n || y >= n) continue;
      const i = y * n + x;
      if (S.tool === "brush") S.ids[i] = S.current;
      else if (S.tool === "eraser") S.ids[i] = UNKNOWN;
      else if (S.tool === "maskbrush") S.mask[i] = 1;
      else if (S.tool === "strokes") S.strokes.set(rgb, 3 * i);
    }
  }
}

function line(a, b) {  // stamps every pixel of the segment a-b (Bresenham)
  let [x0, y0] = a; const [x1, y1] = b;
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
  const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let err = dx + dy;
  for (;;) {
    stamp(x0, y0);
    if (x0 === x1 && y0 === y1) break;
    const e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}

function fill(x, y) {  // 4-connected flood fill of the clicked class with the current one
  const n = S.size, target = S.ids[y * n + x], value = S.current;
  if (target === value) return;
  const stack = [y * n + x];
  while (stack.length) {
    const i = stack.pop();
    if (S.ids[i] !== target) continue;
    S.ids[i] = value;
    const px = i % n;
    if (px > 0) stack.push(i - 1);
    if (px < n - 1) stack.push(i + 1);
    if (i >= n) stack.push(i - n);
    if (i < n * (n - 1)) stack.push(i + n);
  }
}

function selectRect(a, b) {
  const n = S.size;
  const [x0, x1] = [Math.min(a[0], b[0]), Math.max(a[0], b[0])];
  const [y0, y1] = [Math.min(a[1], b[1]), Math.max(a[1], b[1])];
  S.mask.fill(0);
  for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) S.mask[y * n + x] = 1;
}

function onDown(ev) {
  ev.preventDefault();
  const p = pixelAt(ev);
  pushUndo();
  S.drawing = true; S.last = p; S.anchor = p;
  if (S.tool === "fill") { fill(p[0], p[1]); S.drawing = false; }
  else if (S.tool === "select") selectRect(p, p);
  else stamp(p[0], p[1]);
  render();
}

function onMove(ev) {
  const p = pixelAt(ev);
  $("cursor").textContent = `(${p[0]}, ${p[1]})`;
  if (!S.drawing) return;
  if (S.tool === "select") selectRect(S.anchor, p);
  else line(S.last, p);
  S.last = p;
  render();
}

function onUp() { S.drawing = false; }

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// ------------------------------------------------------------------ images

function rgbToDataUrl(rgb) {
  const n = S.size, cv = document.createElement("canvas");
  cv.width = cv.height = n;
  const ctx = cv.getContext("2d"), img = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) img.data.set([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2], 255], 4 * i);
  ctx.putImageData(img, 0, 0);
  return cv.toDataURL("image/png");
}

function dataUrlToRgb(url) {
  return new Promise((resolve) => {
    const im = new Image();
    im.onload = () => {
      const n = S.size, cv = document.createElement("canvas");
      cv.width = cv.height = n;
      const ctx = cv.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(im, 0, 0, n, n);
      const d = ctx.getImageData(0, 0, n, n).data, rgb = new Uint8ClampedArray(3 * n * n);
      for (let i = 0; i < n * n; i++) rgb.set([d[4 * i], d[4 * i + 1], d[4 * i + 2]], 3 * i);
      resolve(rgb);
    };
    im.src = url;
  });
}

function refreshDownloads() {
  // Colour PNG of the painted map, made here (exact colours, no smoothing); the id PNG
  // comes from the server (a single-channel PNG the sampler reads back).
  const n = S.size, rgb = new Uint8ClampedArray(3 * n * n);
  const unl = S.info.unlabeled_class;
  for (let i = 0; i < n * n; i++) {
    const id = S.ids[i] < 0 ? unl : S.ids[i];
    rgb.set(id === null ? [0, 0, 0] : S.info.classes[id].color, 3 * i);
  }
  const a = $("download-color");
  a.href = rgbToDataUrl(rgb);
  a.classList.remove("disabled");
}

// ------------------------------------------------------------------ requests

let polling = null;

function startProgress() {
  $("progress").hidden = false;
  $("progress-bar").style.width = "0";
  $("progress-text").textContent = "starting";
  polling = setInterval(async () => {
    try {
      const p = await api("/api/progress");
      if (p.phase === "compiling") {
        $("progress-text").textContent = `compiling (first request with these settings) ${p.elapsed.toFixed(1)} s`;
      } else if (p.phase === "sampling" && p.total) {
        $("progress-bar").style.width = `${100 * p.step / p.total}%`;
        $("progress-text").textContent = `step ${p.step} / ${p.total}`;
      }
    } catch (e) { /* the next poll tries again */ }
  }, 250);
}

function stopProgress() {
  clearInterval(polling);
  $("progress").hidden = true;
}

function settings() {
  return {
    steps: parseInt($("steps").value, 10), guidance: parseFloat($("guidance").value),
    seed: parseInt($("seed").value, 10), num_samples: parseInt($("num-samples").value, 10),
  };
}

function timingText(what, t) {
  return t.compiled
    ? `${what}: ${t.seconds.toFixed(2)} s (first request with these settings: includes compiling)`
    : `${what}: ${t.seconds.toFixed(2)} s`;
}

async function run(button, path, body, label) {
  showError("");
  const buttons = document.querySelectorAll("button.primary");
  buttons.forEach((b) => { b.disabled = true; });
  startProgress();
  try {
    return await api(path, body);
  } catch (e) {
    showError(e.message);
    return null;
  } finally {
    stopProgress();
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function addResults(title, images, kind) {
  const box = $("results");
  const head = document.createElement("div");
  head.className = "group";
  head.textContent = title;
  box.prepend(head);
  const frag = document.createElement("div");
  frag.className = "row";
  images.forEach((url, j) => {
    const div = document.createElement("div");
    div.className = "result";
    const img = document.createElement("img");
    img.src = url; img.className = kind; img.dataset.kind = kind;
    img.title = "click: use as the source for editing";
    img.addEventListener("click", () => setSource(img));
    const a = document.createElement("a");
    a.href = url; a.download = `${kind}_${j}.png`; a.textContent = "download";
    div.appendChild(img); div.appendChild(a);
    frag.appendChild(div);
  });
  head.after(frag);
  return frag.querySelectorAll("img");
}

function setSource(img) {
  document.querySelectorAll(".result img").forEach((i) => i.classList.remove("source"));
  img.classList.add("source");
  S.source = img.src;
}

async function generate() {
  const corruption = document.querySelector("input[name=corruption]:checked").value;
  const body = {ids: Array.from(S.ids), corruption, compare: $("compare").checked,
    ...settings()};
  const out = await run($("generate"), "/api/generate", body);
  if (!out) return;
  // The comparison goes in first so that it sits below this model's row (rows are prepended).
  if (out.compare) addResults(`second checkpoint: ${out.compare.where}`, out.compare.images, "compare");
  const imgs = addResults(`samples (seed ${body.seed}${corruption !== "none" ? ", " + corruption : ""})`,
    out.images, "sample");
  setSource(imgs[0]);
  let text = timingText("generate", out.timing);
  if (out.compare) text += "\n" + timingText("second checkpoint", out.compare.timing);
  $("timing").textContent = text;
  S.corrupted = out.corrupted;
  $("corrupted-box").hidden = corruption === "none";
  if (corruption !== "none") {
    drawIds($("corrupted"), out.corrupted);
    showMessage(`${corruption}: ${out.changed_pixels} pixels changed before sampling`);
  }
  const a = $("download-label");
  if (out.label_png) { a.href = out.label_png; a.classList.remove("disabled"); }
}

function drawIds(cv, ids) {
  const n = S.size;
  cv.width = cv.height = n;
  const ctx = cv.getContext("2d"), img = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) {
    const c = colorOf(ids[i]) || [170, 170, 170];
    img.data.set([c[0], c[1], c[2], 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

async function regenerate() {
  if (!S.source) { showError("select a source: generate first, or click a result"); return; }
  const body = {source: S.source, ids: Array.from(S.ids), mask: Array.from(S.mask),
    dilate: parseInt($("dilate").value, 10), ...settings()};
  const out = await run($("regenerate"), "/api/masked", body);
  if (!out) return;
  addResults("regenerated region (everything else kept)", out.images, "masked");
  $("timing").textContent = timingText("regenerate", out.timing);
}

function relabel() {
  if (!S.mask.some((v) => v)) { showError("select a region first (Select or Mask brush)"); return; }
  pushUndo();
  for (let i = 0; i < S.ids.length; i++) if (S.mask[i]) S.ids[i] = S.current;
  render();
}

async function sdedit() {
  const body = {guide: rgbToDataUrl(S.strokes),
    ids: $("sdedit-use-label").checked ? Array.from(S.ids) : null,
    t0: parseFloat($("t0").value), ...settings()};
  const out = await run($("sdedit"), "/api/sdedit", body);
  if (!out) return;
  addResults(`SDEdit (t0 = ${body.t0})`, out.images, "sdedit");
  $("timing").textContent = timingText("SDEdit", out.timing);
}

function strokesFromLabels() {
  pushUndo();
  for (let i = 0; i < S.ids.length; i++) {
    S.strokes.set(colorOf(S.ids[i]) || [128, 128, 128], 3 * i);
  }
  setTool("strokes");
}

async function strokesFromSource() {
  if (!S.source) { showError("select a source first"); return; }
  pushUndo();
  S.strokes = await dataUrlToRgb(S.source);
  setTool("strokes");
}

function readFile(input) {
  return new Promise((resolve, reject) => {
    const f = input.files[0];
    if (!f) { reject(new Error("no file")); return; }
    const limit = S.info.limits.max_body_bytes;
    if (f.size > limit * 0.7) { reject(new Error(`${f.name}: ${f.size} bytes is over the upload limit`)); return; }
    const r = new FileReader();
    r.onload = () => resolve({name: f.name, data: r.result});
    r.onerror = () => reject(new Error(`${f.name}: could not be read`));
    r.readAsDataURL(f);
  });
}

async function uploadLabel() {
  showError("");
  try {
    const out = await api("/api/label", await readFile($("upload-label")));
    pushUndo();
    S.ids = Int32Array.from(out.ids);
    render();
    showMessage(out.summary + (out.mode === "palette" ?
      `\n${out.snapped_pixels} pixels snapped to the palette` : ""));
  } catch (e) { showError(e.message); }
  $("upload-label").value = "";
}

async function uploadImage() {
  showError("");
  try {
    const out = await api("/api/image", await readFile($("upload-image")));
    const imgs = addResults("uploaded photo", [out.image], "photo");
    setSource(imgs[0]);
  } catch (e) { showError(e.message); }
  $("upload-image").value = "";
}

// ------------------------------------------------------------------ Paint by Example
// State: the photo (RGBA pixels at its own size), the mask (1 = repaint) and the exemplar.
const P = {source: null, sourceUrl: null, w: 0, h: 0, mask: null, exemplar: null,
           drawing: false, last: null};

function showTab(name) {
  $("tab-labels").hidden = name !== "labels";
  $("tab-paint").hidden = name !== "paint";
  $("tab-btn-labels").classList.toggle("active", name === "labels");
  $("tab-btn-paint").classList.toggle("active", name === "paint");
}

function paintError(msg) { $("paint-error").textContent = msg || ""; }

function paintRender() {
  if (!P.source) return;
  const cv = $("paint-canvas"), ctx = cv.getContext("2d");
  const img = ctx.createImageData(P.w, P.h);
  img.data.set(P.source);
  for (let i = 0; i < P.w * P.h; i++) {
    if (!P.mask[i]) continue;  // repaint region: blended with red
    img.data[4 * i] = (img.data[4 * i] + 255) >> 1;
    img.data[4 * i + 1] >>= 1;
    img.data[4 * i + 2] >>= 1;
  }
  ctx.putImageData(img, 0, 0);
}

function paintPixel(ev) {
  const cv = $("paint-canvas"), r = cv.getBoundingClientRect();
  return [Math.floor((ev.clientX - r.left) * P.w / r.width),
          Math.floor((ev.clientY - r.top) * P.h / r.height)];
}

function paintStamp(cx, cy) {
  const rad = parseInt($("paint-brush").value, 10) / 2;
  for (let y = Math.floor(cy - rad); y <= cy + rad; y++) {
    for (let x = Math.floor(cx - rad); x <= cx + rad; x++) {
      if (x < 0 || y < 0 || x >= P.w || y >= P.h) continue;
      if ((x - cx) ** 2 + (y - cy) ** 2 <= rad * rad + 0.5) P.mask[y * P.w + x] = 1;
    }
  }
}

function paintLine(a, b) {
  const n = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 1);
  for (let i = 0; i <= n; i++) {
    paintStamp(Math.round(a[0] + (b[0] - a[0]) * i / n), Math.round(a[1] + (b[1] - a[1]) * i / n));
  }
}

function maskDataUrl() {
  const cv = document.createElement("canvas");
  cv.width = P.w; cv.height = P.h;
  const ctx = cv.getContext("2d"), img = ctx.createImageData(P.w, P.h);
  for (let i = 0; i < P.w * P.h; i++) {
    const v = P.mask[i] ? 255 : 0;
    img.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return cv.toDataURL("image/png");
}

function loadPixels(url) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => {
      const cv = document.createElement("canvas");
      cv.width = im.naturalWidth; cv.height = im.naturalHeight;
      const ctx = cv.getContext("2d");
      ctx.drawImage(im, 0, 0);
      resolve({w: cv.width, h: cv.height, data: ctx.getImageData(0, 0, cv.width, cv.height).data});
    };
    im.onerror = () => reject(new Error("the image could not be decoded"));
    im.src = url;
  });
}

async function setPaintSource(url) {
  const px = await loadPixels(url);
  P.source = px.data; P.sourceUrl = url; P.w = px.w; P.h = px.h;
  P.mask = new Uint8Array(P.w * P.h);
  const cv = $("paint-canvas");
  cv.width = P.w; cv.height = P.h;
  // Small photos are enlarged to a usable size; large ones shrink to fit (CSS max size).
  const scale = Math.max(1, Math.floor(512 / Math.max(P.w, P.h)));
  cv.style.width = `${P.w * scale}px`; cv.style.height = `${P.h * scale}px`;
  paintRender();
  document.body.dataset.paintSource = `${P.w}x${P.h}`;  // the browser test waits for this
}

async function paintUploadSource() {
  paintError("");
  try {
    const f = await readFile($("paint-upload-source"));
    const out = await api("/api/paint_source", f);
    await setPaintSource(out.image);
    $("paint-message").textContent = `${f.name}: ${out.width}x${out.height}` +
      (out.cropped ? ` (cropped to a multiple of ${S.info.paint.factor})` : "");
  } catch (e) { paintError(e.message); }
  $("paint-upload-source").value = "";
}

function setExemplarFile(f) {
  paintError("");
  if (!f) return;
  if (f.size > S.info.limits.max_body_bytes * 0.3) {
    paintError(`${f.name}: ${f.size} bytes is over the upload limit`);
    return;
  }
  const r = new FileReader();
  r.onload = () => {
    P.exemplar = r.result;
    $("paint-exemplar").src = r.result;
    $("paint-exemplar").hidden = false;
    document.body.dataset.paintExemplar = f.name;
  };
  r.onerror = () => paintError(`${f.name}: could not be read`);
  r.readAsDataURL(f);
}

let paintPolling = null;

async function paintRun() {
  paintError("");
  if (!P.source) { paintError("upload a photo first"); return; }
  if (!P.mask.some((v) => v)) { paintError("paint the region to repaint on the photo first"); return; }
  if (!P.exemplar) { paintError("drop an exemplar image first"); return; }
  const body = {
    source: P.sourceUrl, mask: maskDataUrl(), exemplar: P.exemplar,
    steps: parseInt($("paint-steps").value, 10), guidance: parseFloat($("paint-guidance").value),
    seed: parseInt($("paint-seed").value, 10), sampler: $("paint-sampler").value,
    paste_back: $("paint-paste-back").checked,
  };
  const buttons = document.querySelectorAll("button.primary");
  buttons.forEach((b) => { b.disabled = true; });  // one request at a time
  $("paint-progress").hidden = false;
  $("paint-progress-bar").style.width = "0";
  $("paint-progress-text").textContent = "starting";
  paintPolling = setInterval(async () => {
    try {
      const p = await api("/api/progress");
      if (p.phase === "compiling") {
        $("paint-progress-text").textContent = `compiling ${p.elapsed.toFixed(1)} s`;
      } else if (p.phase === "sampling" && p.total) {
        $("paint-progress-bar").style.width = `${100 * p.step / p.total}%`;
        $("paint-progress-text").textContent = `network call ${p.step} / ${p.total}`;
      }
    } catch (e) { /* the next poll tries again */ }
  }, 250);
  try {
    const out = await api("/api/paint", body);
    const img = document.createElement("img");
    img.src = out.image;
    img.className = "paint-result";
    $("paint-results").prepend(img);
    $("paint-timing").textContent = timingText("paint", out.timing);
  } catch (e) {
    paintError(e.message);
  } finally {
    clearInterval(paintPolling);
    $("paint-progress").hidden = true;
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function setupPaint() {
  const info = S.info.paint, d = S.info.defaults.paint || {};
  $("tabs").hidden = false;
  $("tab-btn-labels").addEventListener("click", () => showTab("labels"));
  $("tab-btn-paint").addEventListener("click", () => showTab("paint"));
  for (const name of info.samplers) {
    const o = document.createElement("option");
    o.value = o.textContent = name;
    $("paint-sampler").appendChild(o);
  }
  if (d.steps !== undefined) $("paint-steps").value = d.steps;
  if (d.guidance !== undefined) $("paint-guidance").value = d.guidance;
  if (d.seed !== undefined) $("paint-seed").value = d.seed;
  if (d.sampler !== undefined) $("paint-sampler").value = d.sampler;
  $("paint-paste-back").checked = !!d.paste_back;
  const cv = $("paint-canvas");
  cv.addEventListener("mousedown", (ev) => {
    if (!P.source) return;
    P.drawing = true; P.last = paintPixel(ev);
    paintStamp(...P.last); paintRender();
  });
  cv.addEventListener("mousemove", (ev) => {
    if (!P.drawing) return;
    const p = paintPixel(ev);
    paintLine(P.last, p); P.last = p; paintRender();
  });
  window.addEventListener("mouseup", () => { P.drawing = false; });
  $("paint-clear").addEventListener("click", () => { if (P.mask) { P.mask.fill(0); paintRender(); } });
  $("paint-upload-source").addEventListener("change", paintUploadSource);
  $("paint-upload-exemplar").addEventListener("change", () => {
    setExemplarFile($("paint-upload-exemplar").files[0]);
    $("paint-upload-exemplar").value = "";
  });
  const drop = $("paint-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    setExemplarFile(e.dataTransfer.files[0]);
  });
  $("paint-run").addEventListener("click", paintRun);
  $("model-info").textContent += ` | Paint by Example: ${info.where}`;
}

// ------------------------------------------------------------------ start

async function main() {
  S.info = await api("/api/info");
  const n = S.size = S.info.size;
  S.ids = new Int32Array(n * n).fill(0);
  S.strokes = new Uint8ClampedArray(3 * n * n).fill(128);
  S.mask = new Uint8Array(n * n);
  const cv = $("canvas");
  cv.width = cv.height = n;
  const d = S.info.defaults;
  for (const [field, id] of [["steps", "steps"], ["guidance", "guidance"], ["seed", "seed"],
                             ["num_samples", "num-samples"], ["t0", "t0"]]) {
    if (d[field] !== undefined) $(id).value = d[field];
  }
  $("t0-value").textContent = $("t0").value;
  $("model-info").textContent = `${S.info.where} | ${n}x${n} labels, ${S.info.num_classes} classes`;
  if (S.info.compare) { $("compare-row").hidden = false; $("compare-name").textContent = S.info.compare; }
  cv.addEventListener("mousedown", onDown);
  cv.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  for (const t of ["brush", "fill", "eraser", "select", "maskbrush", "strokes"]) {
    $("tool-" + t).addEventListener("click", () => setTool(t));
  }
  $("undo").addEventListener("click", undo);
  window.addEventListener("keydown", (e) => { if (e.ctrlKey && e.key === "z") undo(); });
  $("search").addEventListener("input", buildPalette);
  $("generate").addEventListener("click", generate);
  $("regenerate").addEventListener("click", regenerate);
  $("relabel").addEventListener("click", relabel);
  $("sdedit").addEventListener("click", sdedit);
  $("strokes-from-labels").addEventListener("click", strokesFromLabels);
  $("strokes-from-source").addEventListener("click", strokesFromSource);
  $("clear-mask").addEventListener("click", () => { pushUndo(); S.mask.fill(0); render(); });
  $("upload-label").addEventListener("change", uploadLabel);
  $("upload-image").addEventListener("change", uploadImage);
  $("t0").addEventListener("input", () => { $("t0-value").textContent = $("t0").value; });
  if (S.info.paint) setupPaint();
  selectClass(0);
  render();
  document.body.dataset.ready = "1";  // the browser test waits for this
}

main().catch((e) => showError(e.message));
