// The page over the JSON API (/api, documented at /docs). No framework, no build step: one file.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  query: null,        // {kind: "upload", file, box} or {kind: "source", sourceId, box, name}
  offset: 0,
  lastResult: null,
  browseOffset: 0,
  browseSource: null, // the source shown in the browse pane, with its detections
  match: null,        // the match opened in the match view
  info: null,
};
const BROWSE_PAGE = 50;
const DISPLAY_WIDTH = 400; // pixels of the query and browse canvases

function showMessage(text) { $("message").textContent = text || ""; }

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({detail: response.statusText}));
  if (!response.ok) throw new Error(`${response.status}: ${body.detail}`);
  return body;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the image could not be loaded"));
    image.src = src;
  });
}

// Draws ``image`` at ``width`` pixels wide with ``boxes`` (image pixels); returns the scale.
function drawImage(canvas, image, width, boxes, highlight) {
  const scale = Math.min(1, width / image.naturalWidth);
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  context.lineWidth = 2;
  for (const box of boxes || []) {
    context.strokeStyle = box === highlight ? "#ff1744" : "#00e676";
    context.strokeRect(box[0] * scale, box[1] * scale, (box[2] - box[0]) * scale,
                       (box[3] - box[1]) * scale);
  }
  return scale;
}

function formatTime(seconds) { return seconds === null ? "" : `${seconds.toFixed(1)} s`; }

function describeBox(box) { return box.map((v) => Math.round(v)).join(", "); }

// --- the index ---------------------------------------------------------------------------
async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  $("index-info").textContent =
    `${info.count} persons in ${info.num_sources} images and frames · ${info.recall}`;
  const select = $("filter-camera");
  for (const camera of info.cameras) {
    const option = document.createElement("option");
    option.value = camera;
    option.textContent = camera || "(no camera)";
    select.appendChild(option);
  }
}

// --- query: upload and draw a box ---------------------------------------------------------
let uploadImage = null, uploadScale = 1, dragStart = null;

async function onUpload() {
  const file = $("upload-input").files[0];
  if (!file) return;
  uploadImage = await loadImage(URL.createObjectURL(file));
  state.query = {kind: "upload", file, box: null};
  uploadScale = drawImage($("query-canvas"), uploadImage, DISPLAY_WIDTH, []);
  $("query-label").textContent = `${file.name}: whole image (draw a box to pick a person)`;
}

function canvasPoint(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * canvas.width / rect.width,
          (event.clientY - rect.top) * canvas.height / rect.height];
}

function setupDrawing() {
  const canvas = $("query-canvas");
  canvas.addEventListener("mousedown", (event) => {
    if (uploadImage) dragStart = canvasPoint(canvas, event);
  });
  canvas.addEventListener("mousemove", (event) => {
    if (!dragStart) return;
    const [x, y] = canvasPoint(canvas, event);
    const box = [Math.min(dragStart[0], x), Math.min(dragStart[1], y),
                 Math.max(dragStart[0], x), Math.max(dragStart[1], y)].map((v) => v / uploadScale);
    drawImage(canvas, uploadImage, DISPLAY_WIDTH, [box], box);
    state.query.box = box;
  });
  window.addEventListener("mouseup", () => {
    if (!dragStart) return;
    dragStart = null;
    const box = state.query.box;
    if (box && (box[2] - box[0] < 2 || box[3] - box[1] < 2)) state.query.box = null; // a click
    $("query-label").textContent = state.query.box
      ? `${state.query.file.name}: box ${describeBox(state.query.box)}`
      : `${state.query.file.name}: whole image`;
  });
}

// --- query: browse indexed frames and click a detected person -----------------------------
async function loadSources() {
  const cameras = selectedCameras();
  const params = new URLSearchParams({offset: state.browseOffset, limit: BROWSE_PAGE});
  cameras.forEach((camera) => params.append("camera", camera));
  const page = await api(`/api/sources?${params}`);
  const list = $("source-list");
  list.innerHTML = "";
  for (const source of page.sources) {
    const item = document.createElement("li");
    item.textContent = `${source.name} · ${source.camera} · ${source.num_boxes} persons`;
    item.dataset.sourceId = source.source_id;
    item.addEventListener("click", () => openSource(source.source_id, item));
    list.appendChild(item);
  }
  const last = Math.min(state.browseOffset + BROWSE_PAGE, page.total);
  $("browse-page").textContent = `${state.browseOffset + 1}–${last} of ${page.total}`;
  $("browse-prev").disabled = state.browseOffset === 0;
  $("browse-next").disabled = last >= page.total;
}

async function openSource(sourceId, item) {
  document.querySelectorAll("#source-list li").forEach((li) => li.classList.remove("selected"));
  if (item) item.classList.add("selected");
  const source = await api(`/api/sources/${sourceId}`);
  const image = await loadImage(`/api/sources/${sourceId}/image`);
  source.scale = drawImage($("browse-canvas"), image, DISPLAY_WIDTH,
                           source.detections.map((d) => d.box));
  source.image = image;
  state.browseSource = source;
}

function onBrowseClick(event) {
  const source = state.browseSource;
  if (!source) return;
  const [x, y] = canvasPoint($("browse-canvas"), event).map((v) => v / source.scale);
  const hits = source.detections.filter(
    (d) => d.box[0] <= x && x <= d.box[2] && d.box[1] <= y && y <= d.box[3]);
  if (!hits.length) return;
  const box = hits.reduce((a, b) => (area(a.box) <= area(b.box) ? a : b)).box; // the innermost
  drawImage($("browse-canvas"), source.image, DISPLAY_WIDTH, source.detections.map((d) => d.box),
            box);
  setSourceQuery(source.source_id, box, source.name);
  search(0);
}

function area(box) { return (box[2] - box[0]) * (box[3] - box[1]); }

function setSourceQuery(sourceId, box, name) {
  state.query = {kind: "source", sourceId, box, name};
  $("query-label").textContent = `${name}: box ${describeBox(box)}`;
}

// --- search and results -------------------------------------------------------------------
function selectedCameras() {
  return Array.from($("filter-camera").selectedOptions).map((option) => option.value);
}

function filterParams(offset) {
  const params = new URLSearchParams({topk: $("filter-topk").value || 12, offset});
  selectedCameras().forEach((camera) => params.append("camera", camera));
  const start = $("filter-time-start").value, end = $("filter-time-end").value;
  if (start !== "" || end !== "") {
    params.set("time_start", start === "" ? -1e12 : start);
    params.set("time_end", end === "" ? 1e12 : end);
  }
  if ($("filter-all-boxes").checked) params.set("all_boxes", "true");
  return params;
}

async function search(offset) {
  if (!state.query) { showMessage("Choose a query first: upload an image or pick a frame."); return; }
  showMessage("");
  const params = filterParams(offset);
  try {
    let result;
    if (state.query.kind === "upload") {
      const form = new FormData();
      form.append("image", state.query.file);
      if (state.query.box) form.append("box", state.query.box.join(","));
      result = await api(`/api/search?${params}`, {method: "POST", body: form});
    } else {
      result = await api(`/api/sources/${state.query.sourceId}/search?${params}`, {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({box: state.query.box}),
      });
    }
    state.offset = offset;
    state.lastResult = result;
    showResults(result);
  } catch (error) {
    showMessage(error.message);
  }
}

function showResults(result) {
  const grid = $("results-grid");
  grid.innerHTML = "";
  for (const match of result.matches) {
    const card = document.createElement("div");
    card.className = "match";
    Object.assign(card.dataset, {path: match.path, frame: match.frame, row: match.row,
                                 camera: match.camera, rank: match.rank});
    card.innerHTML = `<img alt="match ${match.rank}" src="/api/rows/${match.row}/crop">
      <div><span class="score">#${match.rank} · ${match.score.toFixed(3)}</span></div>
      <div class="source"></div><div class="where"></div>`;
    card.querySelector(".source").textContent = match.name;
    card.querySelector(".where").textContent =
      [match.camera, match.frame >= 0 ? `frame ${match.frame}` : "", formatTime(match.time)]
        .filter(Boolean).join(" · ");
    card.addEventListener("click", () => openMatch(match));
    grid.appendChild(card);
  }
  if (!result.matches.length) grid.textContent = "No match with these filters.";
  const first = result.offset + 1, last = result.offset + result.matches.length;
  $("results-page").textContent = result.matches.length ? `matches ${first}–${last}` : "";
  $("results-prev").disabled = result.offset === 0;
  $("results-next").disabled = !result.more;
  showTimeline(result.matches);
}

function showTimeline(matches) {
  const timeline = $("timeline");
  timeline.innerHTML = "";
  const videos = new Map();
  for (const match of matches) {
    if (match.frame < 0 || match.time === null) continue;
    if (!videos.has(match.path)) videos.set(match.path, []);
    videos.get(match.path).push(match);
  }
  for (const [path, videoMatches] of videos) {
    const duration = Math.max(videoMatches[0].video_duration || 0, 1e-6);
    const row = document.createElement("div");
    row.className = "video";
    row.textContent = `${path.split("/").pop()} (${videoMatches.length} matches, ` +
      `${duration.toFixed(1)} s indexed)`;
    const track = document.createElement("div");
    track.className = "track";
    for (const match of videoMatches) {
      const mark = document.createElement("div");
      mark.className = "mark";
      mark.style.left = `calc(${(100 * match.time / duration).toFixed(2)}% - 2px)`;
      mark.title = `#${match.rank} at ${formatTime(match.time)} (${match.score.toFixed(3)})`;
      mark.addEventListener("click", () => openMatch(match));
      track.appendChild(mark);
    }
    row.appendChild(track);
    timeline.appendChild(row);
  }
  if (!videos.size) timeline.innerHTML = '<p class="hint">No match in a video on this page.</p>';
}

async function openMatch(match) {
  state.match = match;
  const image = await loadImage(`/api/sources/${match.source_id}/image`);
  drawImage($("match-canvas"), image, Math.min(1000, window.innerWidth * 0.85), [match.box],
            match.box);
  $("match-caption").textContent = `#${match.rank} · similarity ${match.score.toFixed(3)} · ` +
    `${match.path} · camera ${match.camera || "–"}` +
    (match.frame >= 0 ? ` · frame ${match.frame} · ${formatTime(match.time)}` : "") +
    ` · detection score ${match.det_score.toFixed(2)}`;
  $("match-view").hidden = false;
}

function searchFromMatch() {
  const match = state.match;
  $("match-view").hidden = true;
  setSourceQuery(match.source_id, match.box, match.name);
  search(0);
}

function setTab(name) {
  $("tab-upload").classList.toggle("active", name === "upload");
  $("tab-browse").classList.toggle("active", name === "browse");
  $("upload-pane").hidden = name !== "upload";
  $("browse-pane").hidden = name !== "browse";
  if (name === "browse" && !$("source-list").children.length) loadSources().catch(
    (error) => showMessage(error.message));
}

function setup() {
  $("upload-input").addEventListener("change", () => onUpload().catch(
    (error) => showMessage(error.message)));
  setupDrawing();
  $("browse-canvas").addEventListener("click", onBrowseClick);
  $("tab-upload").addEventListener("click", () => setTab("upload"));
  $("tab-browse").addEventListener("click", () => setTab("browse"));
  $("browse-prev").addEventListener("click", () => {
    state.browseOffset = Math.max(0, state.browseOffset - BROWSE_PAGE);
    loadSources();
  });
  $("browse-next").addEventListener("click", () => {
    state.browseOffset += BROWSE_PAGE;
    loadSources();
  });
  $("search-button").addEventListener("click", () => search(0));
  $("filter-camera").addEventListener("change", () => {
    if (state.lastResult) search(0);
    if (!$("browse-pane").hidden) { state.browseOffset = 0; loadSources(); }
  });
  const pageSize = () => Number($("filter-topk").value || 12);
  $("results-prev").addEventListener("click", () => search(Math.max(0, state.offset - pageSize())));
  $("results-next").addEventListener("click", () => search(state.offset + pageSize()));
  $("match-search").addEventListener("click", searchFromMatch);
  $("match-close").addEventListener("click", () => { $("match-view").hidden = true; });
  loadInfo().catch((error) => showMessage(error.message));
}

setup();
