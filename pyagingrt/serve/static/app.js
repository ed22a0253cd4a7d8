// The pyagingrt page: calls the KServe v2 HTTP API of Triton (passed through on this origin) with the
// binary tensor extension: photo bytes in, aged photo bytes out. No libraries, nothing fetched from the network.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, photo: null, photoUrl: null, busy: false, pending: false, stream: null };

function show(id, text) {
  const el = $(id);
  el.textContent = text || "";
  el.hidden = !text;
}

function bytesElement(data) { // a BYTES tensor element: 4-byte little-endian length, then the bytes
  const out = new Uint8Array(4 + data.length);
  new DataView(out.buffer).setUint32(0, data.length, true);
  out.set(data, 4);
  return out;
}

async function infer(model, photo, age, seed) {
  const image = bytesElement(photo);
  const inputs = [
    { name: "image", shape: [1, 1], datatype: "BYTES", parameters: { binary_data_size: image.length } },
    { name: "target_age", shape: [1, 1], datatype: "FP32", data: [age] },
    { name: "format", shape: [1, 1], datatype: "BYTES", data: ["png"] },
  ];
  if (state.config.stochastic) inputs.push({ name: "seed", shape: [1, 1], datatype: "INT64", data: [seed] });
  const outputs = [
    { name: "image", parameters: { binary_data: true } },
    { name: "error", parameters: { binary_data: false } },
    { name: "faces", parameters: { binary_data: false } },
  ];
  const header = new TextEncoder().encode(JSON.stringify({ inputs, outputs }));
  const body = new Uint8Array(header.length + image.length);
  body.set(header, 0);
  body.set(image, header.length);
  const resp = await fetch(`/v2/models/${encodeURIComponent(model)}/infer`, {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(header.length) },
    body,
  });
  const raw = new Uint8Array(await resp.arrayBuffer());
  const headerLength = Number(resp.headers.get("Inference-Header-Content-Length") || raw.length);
  const json = JSON.parse(new TextDecoder().decode(raw.subarray(0, headerLength)));
  if (!resp.ok) throw new Error(json.error || `HTTP ${resp.status}`);
  let offset = headerLength;
  const result = {};
  for (const out of json.outputs) {
    const size = out.parameters && out.parameters.binary_data_size;
    if (size !== undefined) {
      result[out.name] = raw.subarray(offset, offset + size);
      offset += size;
    } else {
      result[out.name] = out.data;
    }
  }
  const error = result.error && result.error[0];
  if (error) throw new Error(error);
  const tensor = result.image; // one BYTES element: length prefix + PNG
  const length = new DataView(tensor.buffer, tensor.byteOffset, 4).getUint32(0, true);
  return { png: tensor.slice(4, 4 + length), faces: result.faces ? result.faces[0] : 0 };
}

function ageRange() {
  const groups = state.config.age_groups;
  const low = Math.max(1, Math.min(...groups.map((g) => g.low)));
  const highs = groups.map((g) => (g.high === null ? g.low + 20 : g.high));
  return [low, Math.min(100, Math.max(...highs))];
}

async function run() {
  if (!state.photo) return;
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  const age = Number($("age").value);
  show("status", `Ageing to ${age}...`);
  try {
    const result = await infer($("model").value, state.photo, age, Number($("seed").value));
    $("after").src = URL.createObjectURL(new Blob([result.png], { type: "image/png" }));
    $("after").dataset.age = String(age);
    show("error", "");
    show("status", `Age ${age}: ${result.faces} face(s)`);
    $("sheet").disabled = false;
  } catch (err) {
    $("after").removeAttribute("src");
    show("status", "");
    show("error", err.message);
  } finally {
    state.busy = false;
    if (state.pending) { state.pending = false; run(); }
  }
}

function setPhoto(bytes, type) {
  state.photo = bytes;
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(new Blob([bytes], { type }));
  $("before").src = state.photoUrl;
  $("before").hidden = false;
  $("video").hidden = true;
  run();
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be shown"));
    img.src = src;
  });
}

async function progressionSheet() {
  const [low, high] = ageRange();
  const ages = [0, 1, 2, 3].map((k) => Math.round(low + ((high - low) * k) / 3));
  const tiles = [{ label: "input", src: state.photoUrl }];
  show("error", "");
  for (const age of ages) {
    show("status", `Progression sheet: age ${age}...`);
    const result = await infer($("model").value, state.photo, age, Number($("seed").value));
    tiles.push({ label: `age ${age}`, src: URL.createObjectURL(new Blob([result.png], { type: "image/png" })) });
  }
  const images = await Promise.all(tiles.map((t) => loadImage(t.src)));
  const tile = 256, band = 32;
  const canvas = document.createElement("canvas");
  canvas.width = tile * tiles.length;
  canvas.height = tile + band;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((img, i) => {
    const scale = Math.min(tile / img.width, tile / img.height);
    const w = img.width * scale, h = img.height * scale;
    ctx.drawImage(img, i * tile + (tile - w) / 2, (tile - h) / 2, w, h);
    ctx.fillStyle = "black";
    ctx.font = "18px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(tiles[i].label, i * tile + tile / 2, tile + band * 0.7);
  });
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "progression-sheet.png";
  link.id = "sheet-link";
  document.body.appendChild(link);
  link.click();
  show("status", `Progression sheet: ${ages.join(", ")}`);
}

async function startWebcam() {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (err) {
    show("error", `The webcam is not available: ${err.message}`);
    return;
  }
  $("video").srcObject = state.stream;
  $("video").hidden = false;
  $("before").hidden = true;
  $("snap").hidden = false;
}

function snap() {
  const video = $("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  state.stream.getTracks().forEach((t) => t.stop());
  $("snap").hidden = true;
  canvas.toBlob(async (blob) => setPhoto(new Uint8Array(await blob.arrayBuffer()), "image/png"), "image/png");
}

async function init() {
  state.config = await (await fetch("config.json")).json();
  if (state.config.random_weights) {
    show("banner", "This server runs RANDOM WEIGHTS: the aged images are meaningless.");
  }
  // the photos models this server serves (Triton's repository index is closed by PyTriton): one per engine
  for (const name of state.config.photos_models) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("model").appendChild(option);
  }
  const [low, high] = ageRange();
  $("age").min = String(low);
  $("age").max = String(high);
  $("age").value = String(Math.round((low + high) / 2));
  $("age-value").textContent = $("age").value;
  $("seed-row").hidden = !state.config.stochastic;
  $("file").addEventListener("change", async () => {
    const file = $("file").files[0];
    if (file) setPhoto(new Uint8Array(await file.arrayBuffer()), file.type);
  });
  $("age").addEventListener("input", () => { $("age-value").textContent = $("age").value; });
  $("age").addEventListener("change", run);
  $("model").addEventListener("change", run);
  $("seed").addEventListener("change", run);
  $("webcam").addEventListener("click", startWebcam);
  $("snap").addEventListener("click", snap);
  $("sheet").addEventListener("click", () => progressionSheet().catch((err) => show("error", err.message)));
  show("status", `Ready: ${state.config.model}. Choose a photo.`);
  document.body.dataset.ready = "1";
}

init().catch((err) => show("error", `The server did not answer: ${err.message}`));
