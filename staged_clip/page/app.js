// The page of serve.py: plain JavaScript over the JSON API (docs/serve.md). It polls each job
// (GET /api/jobs/{id}) and its preview, so that it works with a token too, which EventSource
// cannot send.
"use strict";
const $ = (id) => document.getElementById(id);
const ENDED = ["done", "failed", "cancelled"];

function headers(json) {
  const h = {};
  const token = localStorage.getItem("token");
  if (token) h["Authorization"] = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, options = {}) {
  const answer = await fetch(path, { ...options, headers: headers(options.body !== undefined) });
  const data = await answer.json().catch(() => ({ error: answer.statusText }));
  if (!answer.ok) {
    const error = new Error(data.error || answer.statusText);
    error.status = answer.status;
    throw error;
  }
  return data;
}

function show(img, url) {  // an <img>'s new blob URL, the old one let go
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = url;
}

async function blobUrl(path) {  // an image fetched with the token, as a URL an <img> can show
  const answer = await fetch(path, { headers: headers(false) });
  if (!answer.ok) return null;
  return URL.createObjectURL(await answer.blob());
}

function say(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "muted";
}

async function loadStatus() {
  try {
    const status = await api("/api/status");
    $("model").textContent = `${status.clip_model} on ${status.devices.join(", ")}; ` +
      `${status.jobs.queued} queued, ${status.jobs.running} running`;
    $("size").max = status.limits.size; $("steps").max = status.limits.steps;
    $("variations").max = status.limits.variations;
  } catch (e) { say(e.message, true); }
}

async function loadBakes() {
  try {
    const { bakes } = await api("/api/bakes");
    const select = $("bake");
    select.replaceChildren(...bakes.filter((b) => b.usable).map((b) => {
      const option = document.createElement("option");
      option.value = b.name; option.textContent = `${b.name} (${b.kind}: ${b.prompt})`;
      return option;
    }));
  } catch (e) { say(e.message, true); }
}

function request() {
  const body = { prompt: $("prompt").value, method: $("method").value };
  for (const field of ["size", "steps", "seed", "variations"]) {
    if ($(field).value !== "") body[field] = Number($(field).value);
  }
  if (body.method === "microwave") body.bake = $("bake").value;
  if (body.method === "auto") delete body.size;  // the nearest bakes' size
  if ($("palette").value) body.palette = $("palette").value;
  return body;
}

function jobCard(id, text) {
  const card = document.createElement("div");
  card.className = "job"; card.id = "job-" + id;
  card.innerHTML = `<img alt="preview"><div><div class="what"></div><div class="state muted">queued</div>
    <progress max="1" value="0"></progress> <button type="button">Cancel</button></div>`;
  card.querySelector(".what").textContent = text;
  card.querySelector("button").onclick = () => api(`/api/jobs/${id}`, { method: "DELETE" }).catch(
    (e) => say(e.message, true));
  $("jobs").prepend(card);
  return card;
}

async function follow(id, card, onDone) {
  let shown = null, wait = 400;
  for (;;) {
    let job;
    try {
      job = await api(`/api/jobs/${id}`);
      wait = 400;
    } catch (e) {  // a server restarting, a network blip: try again, less often; a job it lost: stop
      say(e.message, true);
      if (e.status === 404 || e.status === 401) return;
      wait = Math.min(wait * 2, 10000);
      await new Promise((r) => setTimeout(r, wait));
      continue;
    }
    const state = card.querySelector(".state");
    const bar = card.querySelector("progress");
    if (job.state === "queued") state.textContent = `queued: ${job.position} ahead`;
    if (job.state === "running") {
      state.textContent = `running: step ${job.step} of ${job.steps}`;
      bar.max = job.steps || 1; bar.value = job.step;
      if (job.preview && job.preview !== shown) {  // a new preview is made every few steps
        const url = await blobUrl(`/api/jobs/${id}/preview.png`);
        if (url) { show(card.querySelector("img"), url); shown = job.preview; }
      }
    }
    if (ENDED.includes(job.state)) {
      state.textContent = job.state + (job.error ? ": " + job.error : "");
      state.className = job.state === "failed" ? "state error" : "state muted";
      bar.value = bar.max;
      card.querySelector("button").remove();
      if (job.state === "done") await onDone(job, card);
      say("");
      loadStatus();
      return;
    }
    await new Promise((r) => setTimeout(r, wait));
  }
}

async function addToGallery(job, card) {
  const preview = card.querySelector("img");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  card.remove();
  const r = job.request;
  const settings = `${r.method}${r.bake ? " " + r.bake : ""}, ${r.size || "bake's"} px, ${r.steps || "default"} steps` +
    `${r.palette ? ", " + r.palette : ""}`;
  const images = job.images.filter((path) => !path.endsWith("_sheet.png"));
  for (const [i, path] of [...images.entries()].reverse()) {  // prepended: the first seed ends first
    const url = await blobUrl(path);
    const item = document.createElement("figure");
    item.className = "card";
    const name = path.split("/").pop();
    item.innerHTML = `<img alt=""><figcaption><div class="prompt"></div><div class="muted"></div>
      <a download="${name}">download</a></figcaption>`;
    item.querySelector("img").src = url; item.querySelector("img").alt = job.result.prompt || "";
    item.querySelector("img").dataset.path = path;
    item.querySelector(".prompt").textContent = job.result.prompt || "";
    item.querySelector(".muted").textContent = `seed ${job.result.seeds[i]}; ${settings}`;
    item.querySelector("a").href = url;
    $("gallery").prepend(item);
  }
}

$("make").onsubmit = async (event) => {
  event.preventDefault();
  const body = request();
  try {
    const { id, position } = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
    say(`queued (${position} ahead)`);
    follow(id, jobCard(id, body.prompt), addToGallery);
    loadStatus();
  } catch (e) { say(e.message, true); }
};

$("bakeform").onsubmit = async (event) => {
  event.preventDefault();
  const body = { prompt: $("bakeprompt").value, meta_steps: Number($("bakesteps").value),
    size: Number($("bakesize").value), stages: Number($("bakestages").value),
    steps: Number($("bakestagesteps").value) };
  if ($("bakename").value) body.name = $("bakename").value;
  try {
    const { id } = await api("/api/bakes", { method: "POST", body: JSON.stringify(body) });
    say("bake queued");
    follow(id, jobCard(id, "bake: " + body.prompt), async (job, card) => {
      card.querySelector(".state").textContent = `baked as ${job.result.bake}`;
      await loadBakes();
    });
  } catch (e) { say(e.message, true); }
};

$("method").onchange = () => { $("bake").disabled = $("method").value !== "microwave"; };
$("token").value = localStorage.getItem("token") || "";
$("token").onchange = () => { localStorage.setItem("token", $("token").value); loadStatus(); loadBakes(); };
loadStatus();
loadBakes();
