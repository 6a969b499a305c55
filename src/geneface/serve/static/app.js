// The page of `geneface serve`: Speak, Live, Train and Evaluate on the app's HTTP/WebSocket API (README
// "geneface serve"). Plain JavaScript, no framework; everything it loads comes from the app itself.
"use strict";

const RATE = 16000;           // the server's audio: 16 kHz mono float32
const FRAME_SAMPLES = 640;    // one frame's audio (40 ms at 25 frames/s)
const CHUNK = 320;            // audio is sent in 20 ms chunks
const PLAY_LEAD_S = 0.12;     // frames play this long after they arrive (jitter buffer)
const POLL_MS = 500;

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const app = { info: null, people: [], live: null };
window.geneface = app;  // for tests and the curious

// --- the API ------------------------------------------------------------------------------------------

class ApiError extends Error {}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (e) {
    throw new ApiError("the server cannot be reached (is geneface serve still running?)");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    throw new ApiError((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function postJSON(path, data) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data || {}) });
}

// Upload a File or Blob as the raw request body; onProgress(fraction) while it goes. Resolves to the record.
function upload(blob, kind, name, onProgress) {
  const limitMb = app.info ? app.info.limits[kind === "video" ? "video_mb" : "audio_mb"] : null;
  if (limitMb !== null && blob.size > limitMb * 1024 * 1024) {
    return Promise.reject(new ApiError(`${name} is ${(blob.size / 1048576).toFixed(1)} MB; the server takes ` +
                                       `${kind} files up to ${limitMb} MB`));
  }
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/uploads?kind=${kind}&name=${encodeURIComponent(name)}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status === 201) resolve(xhr.response);
      else reject(new ApiError((xhr.response && xhr.response.error) || `the upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new ApiError("the upload failed: the connection was closed (too large a file?)"));
    xhr.send(blob);
  });
}

// Poll a job until it ends; onUpdate(job) each time. Resolves to the ended job.
async function watchJob(id, onUpdate) {
  for (;;) {
    const job = await api(`/api/jobs/${id}`);
    onUpdate(job);
    if (!["queued", "running"].includes(job.state)) return job;
    await sleep(POLL_MS);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- small helpers --------------------------------------------------------------------------------------

function show(element, visible) { element.hidden = !visible; }

function message(element, text) {
  element.textContent = text || "";
  show(element, Boolean(text));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.max(0, Math.round(seconds));
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : m > 0 ? `${m} min ${s} s` : `${s} s`;
}

function percent(fraction) { return fraction === null || fraction === undefined ? "" : `${Math.round(fraction * 100)}%`; }

// Which radio of a form's "source" group is checked; shows the matching [data-source] block.
function sourceOf(form) {
  const checked = $("input[name=source]:checked", form);
  return checked ? checked.value : null;
}

function wireSources(form, onChange) {
  const update = () => {
    const source = sourceOf(form);
    for (const block of $$("[data-source]", form)) show(block, block.dataset.source === source);
    if (onChange) onChange(source);
  };
  for (const radio of $$("input[name=source]", form)) radio.addEventListener("change", update);
  update();
}

function controlsOf(form, withSideBySide) {
  const number = (name) => Number($(`[name=${name}]`, form).value);
  const controls = {
    temperature: number("temperature"), seed: Math.trunc(number("seed")), pose: $("[name=pose]", form).value,
    blink: $("[name=blink]", form).value, mouth_scale: number("mouth_scale"), smoothing: number("smoothing"),
  };
  if (withSideBySide) controls.side_by_side = $("[name=side_by_side]", form).checked;
  return controls;
}

// --- tabs and people ----------------------------------------------------------------------------------------

function selectTab(name) {
  if (!$(`#tabs [data-tab="${name}"]`)) name = "speak";
  for (const button of $$("#tabs [data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const section of $$("section.tab")) show(section, section.id === name);
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "train") refreshTrainJobs();
}

async function loadPeople() {
  const { people } = await api("/api/people");
  app.people = people;
  for (const menu of $$("select.people")) {
    const before = menu.value;
    const evaluable = menu.classList.contains("evaluable");
    menu.replaceChildren();
    for (const person of people) {
      const usable = !person.problem && (!evaluable || person.evaluable);
      let label = person.bundled ? `${person.id} (bundled demo)` : person.id;
      if (person.size) label += ` · ${person.size} px`;
      if (person.problem) label += " · cannot be used";
      else if (evaluable && !person.evaluable) label += " · no dataset";
      const option = el("option", { value: person.id }, label);
      option.disabled = !usable;
      if (person.problem) option.title = person.problem;
      menu.append(option);
    }
    const options = Array.from(menu.options);
    const keep = options.find((o) => o.value === before && !o.disabled) || options.find((o) => !o.disabled);
    if (keep) menu.value = keep.value;
  }
}

// --- audio: microphone capture, resampling, decoding, WAV ---------------------------------------------------

// Turns audio at `inRate` into 16 kHz, chunk by chunk: a moving average over one output sample's span (so
// that what is above 8 kHz does not fold back), then linear interpolation.
class Resampler {
  constructor(inRate) {
    this.step = inRate / RATE;
    this.width = Math.max(1, Math.round(this.step));
    this.pos = 0;
    this.buffer = new Float32Array(0);
  }

  push(input) {
    const buffer = new Float32Array(this.buffer.length + input.length);
    buffer.set(this.buffer);
    buffer.set(input, this.buffer.length);
    const out = [];
    const w = this.width;
    const smooth = (j) => {
      let sum = 0, n = 0;
      for (let k = Math.max(0, j - w + 1); k <= j; k++) { sum += buffer[k]; n++; }
      return n ? sum / n : 0;
    };
    let p = this.pos;
    while (p + 1 < buffer.length) {
      const i = Math.floor(p), f = p - i;
      out.push(smooth(i) * (1 - f) + smooth(i + 1) * f);
      p += this.step;
    }
    const keep = Math.max(0, Math.floor(p) - w);
    this.buffer = buffer.slice(keep);
    this.pos = p - keep;
    return Float32Array.from(out);
  }
}

// The microphone as 16 kHz mono float32 chunks: onAudio(Float32Array) as they come.
class Microphone {
  constructor(context, onAudio) {
    this.context = context;
    this.onAudio = onAudio;
    this.resampler = new Resampler(context.sampleRate);
  }

  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new ApiError("this browser gives no microphone to this page: open it at http://localhost or " +
                         "http://127.0.0.1 (browsers allow microphones on those and on https only)");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true } });
    } catch (e) {
      throw new ApiError(`no microphone: ${e.message || e.name}`);
    }
    this.source = this.context.createMediaStreamSource(this.stream);
    this.mute = this.context.createGain();
    this.mute.gain.value = 0;  // processed, never heard
    const deliver = (samples) => { const out = this.resampler.push(samples); if (out.length) this.onAudio(out); };
    if (this.context.audioWorklet) {
      await this.context.audioWorklet.addModule("/static/capture.js");
      this.node = new AudioWorkletNode(this.context, "geneface-capture");
      this.node.port.onmessage = (e) => deliver(e.data);
    } else {  // an older browser: the deprecated ScriptProcessorNode
      this.node = this.context.createScriptProcessor(1024, 1, 1);
      this.node.onaudioprocess = (e) => deliver(Float32Array.from(e.inputBuffer.getChannelData(0)));
    }
    this.source.connect(this.node);
    this.node.connect(this.mute);
    this.mute.connect(this.context.destination);
  }

  stop() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    for (const node of [this.source, this.node, this.mute]) if (node) node.disconnect();
    if (this.node && this.node.port) this.node.port.onmessage = null;
  }
}

// A media file (File, Blob or ArrayBuffer) decoded by the browser into 16 kHz mono float32.
async function decodeTo16k(data) {
  const bytes = data instanceof ArrayBuffer ? data : await data.arrayBuffer();
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(bytes);
  } catch (e) {
    throw new ApiError("the browser cannot decode this file as audio");
  } finally {
    context.close();
  }
  const length = Math.max(1, Math.ceil(decoded.duration * RATE));
  const offline = new OfflineAudioContext(1, length, RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return rendered.getChannelData(0).slice();
}

// 16 kHz mono float32 as a 16-bit WAV file.
function wavBlob(samples) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, RATE, true); view.setUint32(28, RATE * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, samples[i])) * 32767, true);
  }
  return new Blob([view.buffer], { type: "audio/wav" });
}

function concatAudio(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) { out.set(chunk, at); at += chunk.length; }
  return out;
}

// --- Speak ------------------------------------------------------------------------------------------------

const speak = { recording: null, recorded: null, job: null };

function setupSpeak() {
  const form = $("#speak-form");
  wireSources(form);
  $("#record-start").addEventListener("click", startRecording);
  $("#record-stop").addEventListener("click", stopRecording);
  $("#speak-cancel").addEventListener("click", () => {
    if (speak.job) postJSON(`/api/jobs/${speak.job}/cancel`).catch((e) => message($("#speak-error"), e.message));
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); render().catch(speakFailed); });
}

async function startRecording() {
  message($("#speak-error"), "");
  const context = new AudioContext();
  const chunks = [];
  const mic = new Microphone(context, (samples) => chunks.push(samples));
  try {
    await mic.start();
  } catch (e) {
    context.close();
    message($("#speak-error"), e.message);
    return;
  }
  speak.recording = { context, mic, chunks, started: performance.now() };
  $("#record-start").disabled = true;
  $("#record-stop").disabled = false;
  $("#record-state").textContent = "recording…";
}

function stopRecording() {
  const recording = speak.recording;
  if (!recording) return;
  recording.mic.stop();
  recording.context.close();
  speak.recording = null;
  const samples = concatAudio(recording.chunks);
  speak.recorded = wavBlob(samples);
  $("#record-start").disabled = false;
  $("#record-stop").disabled = true;
  $("#record-state").textContent = `recorded ${(samples.length / RATE).toFixed(1)} s`;
  const player = $("#record-play");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(speak.recorded);
  show(player, true);
}

async function render() {
  const form = $("#speak-form");
  const status = $("#speak-status"), bar = $("#speak-progress");
  message($("#speak-error"), "");
  const request = { person: form.person.value, controls: controlsOf(form, true) };
  const source = sourceOf(form);
  $("#speak-go").disabled = true;
  try {
    if (source === "example") {
      request.example = true;
    } else if (source === "text") {
      request.text = form.text.value;
    } else {
      let blob = null, name = "recording.wav";
      if (source === "upload") {
        blob = form.file.files[0];
        if (!blob) throw new ApiError("choose a file with the speech first");
        name = blob.name;
      } else {
        if (speak.recording) stopRecording();
        blob = speak.recorded;
        if (!blob) throw new ApiError("record some speech first (Record, speak, Stop)");
      }
      show(bar, true);
      status.textContent = "uploading…";
      const record = await upload(blob, "audio", name, (f) => { bar.value = f; });
      request.audio = record.id;
    }
    status.textContent = "starting…";
    const job = await postJSON("/api/speak", request);
    speak.job = job.id;
    show($("#speak-cancel"), true);
    show(bar, true);
    const ended = await watchJob(job.id, (j) => {
      bar.value = j.progress || 0;
      const left = j.eta ? `, ${duration(j.eta)} left` : "";
      status.textContent = `${j.state}: ${j.detail || ""}${left}`;
    });
    if (ended.state === "done") {
      status.textContent = `done: ${ended.result.frames} frames, ${ended.result.seconds.toFixed(1)} s`;
      const video = $("#speak-video");
      video.src = `${ended.result.video}?v=${ended.id}`;
      show(video, true);
      const link = $("#speak-download");
      link.href = `${ended.result.video}?download=1`;
      link.setAttribute("download", `${request.person}-${ended.id}.mp4`);
      show(link, true);
      show($("#speak-empty"), false);
    } else {
      status.textContent = ended.state;
      if (ended.error) message($("#speak-error"), ended.error);
    }
  } finally {
    $("#speak-go").disabled = false;
    show($("#speak-cancel"), false);
    speak.job = null;
  }
}

function speakFailed(e) {
  $("#speak-status").textContent = "";
  show($("#speak-progress"), false);
  message($("#speak-error"), e.message || String(e));
}

// --- Live -------------------------------------------------------------------------------------------------

// One live session: audio to /api/live in 20 ms chunks, frames back, each drawn when its audio plays.
class LiveSession {
  constructor(form) {
    this.form = form;
    this.person = form.person.value;
    this.controls = controlsOf(form, false);
    this.controls.lookahead = Math.trunc(Number(form.lookahead.value));
    if (form.size.value) this.controls.size = Number(form.size.value);
    this.source = sourceOf(form);
    this.canvas = $("#live-canvas");
    this.received = 0;        // frames received
    this.drawn = 0;           // frames drawn
    this.late = 0;            // frames that came too late to be shown
    this.serverDropped = 0;   // frames' worth of audio the server skipped
    this.sent = 0;            // samples sent
    this.sendLog = [];        // [samples sent so far, time] for each chunk
    this.arrivals = [];       // receive times of the last frames (frames/s)
    this.latencies = [];      // [time, ms] of the last frames
    this.queue = [];          // frames waiting for their time: {when, bitmap, index}
    this.cursor = 0;          // when the next frame's audio starts (AudioContext time)
    this.pending = new Float32Array(0);
    this.ended = false;
    this.fps = null;
    this.latency = null;
  }

  async start() {
    this.context = new AudioContext({ latencyHint: "interactive" });
    if (this.context.state === "suspended") await this.context.resume().catch(() => {});
    this.gain = this.context.createGain();
    this.gain.gain.value = this.form.play.checked ? 1 : 0;
    this.gain.connect(this.context.destination);
    if (this.source === "mic") {
      this.mic = new Microphone(this.context, (samples) => this.queueAudio(samples));
      await this.mic.start();
    } else {
      let data;
      if (this.source === "file") {
        const file = this.form.file.files[0];
        if (!file) throw new ApiError("choose an audio file first");
        data = file;
      } else {
        const response = await fetch("/api/example-speech", { credentials: "same-origin" });
        if (!response.ok) throw new ApiError("the example speech cannot be loaded");
        data = await response.arrayBuffer();
      }
      this.fileAudio = await decodeTo16k(data);
    }
    await this.connect();
    if (this.fileAudio) this.streamFile();
    this.timer = setInterval(() => this.tick(), 250);
    const draw = () => { this.draw(); if (!this.closed) this.raf = requestAnimationFrame(draw); };
    this.raf = requestAnimationFrame(draw);
    this.drawTimer = setInterval(() => this.draw(), 20);  // also where animation frames are throttled
  }

  connect() {
    return new Promise((resolve, reject) => {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${scheme}//${location.host}/api/live`);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let ready = false;
      ws.onopen = () => ws.send(JSON.stringify({
        type: "start", person: this.person, controls: this.controls, idle: true, audio: true, quality: 85 }));
      ws.onmessage = (e) => {
        if (typeof e.data !== "string") { this.onFrame(e.data); return; }
        const msg = JSON.parse(e.data);
        if (msg.type === "ready") {
          ready = true;
          this.canvas.width = msg.size;
          this.canvas.height = msg.size;
          this.delayFrames = msg.delay_frames;
          liveStatus(`live: ${msg.person}, ${msg.size} px, ${msg.fps} frames/s, look-ahead ${msg.delay_frames} frames`);
          resolve();
        } else if (msg.type === "stats") {
          this.serverDropped = msg.dropped;
        } else if (msg.type === "error") {
          this.error = msg.message;
          message($("#live-error"), msg.message);
        } else if (msg.type === "end") {
          this.serverDropped = msg.dropped;
          this.ended = true;
        }
      };
      ws.onclose = (e) => {
        this.wsClosed = true;
        if (!ready) reject(new ApiError(this.error || e.reason || "the live connection was refused"));
        else if (!this.ended && !this.stopping) liveStopped(this.error || "the server closed the live session");
        else this.finishWhenPlayed();
      };
      ws.onerror = () => {};
    });
  }

  // microphone audio: sent in 20 ms chunks as it comes
  queueAudio(samples) {
    const all = new Float32Array(this.pending.length + samples.length);
    all.set(this.pending);
    all.set(samples, this.pending.length);
    let at = 0;
    while (all.length - at >= CHUNK) { this.send(all.subarray(at, at + CHUNK)); at += CHUNK; }
    this.pending = all.slice(at);
  }

  // a file: sent in 20 ms chunks paced by the clock, as if it were spoken now; then the stream is stopped
  streamFile() {
    const t0 = performance.now();
    const audio = this.fileAudio;
    let at = 0;
    this.fileTimer = setInterval(() => {
      const due = Math.min(audio.length, Math.floor((performance.now() - t0) / 1000 * RATE));
      while (at < due) {
        const end = Math.min(at + CHUNK, audio.length);
        if (end > due && end < audio.length) break;
        this.send(audio.subarray(at, end));
        at = end;
      }
      if (at >= audio.length) {
        clearInterval(this.fileTimer);
        this.fileTimer = null;
        this.stop();
      }
    }, CHUNK / RATE * 1000);
  }

  send(samples) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(Float32Array.from(samples).buffer);
    this.sent += samples.length;
    this.sendLog.push([this.sent, performance.now()]);
    if (this.sendLog.length > 2000) this.sendLog.splice(0, 1000);
  }

  onFrame(buffer) {
    const now = performance.now();
    const view = new DataView(buffer);
    const index = view.getUint32(0, true), flags = view.getUint32(4, true);
    const audioEnd = view.getUint32(8, true) + view.getUint32(12, true) * 4294967296;
    const hasAudio = (flags & 2) !== 0, idle = (flags & 1) !== 0;
    const audio = hasAudio ? new Float32Array(buffer.slice(16, 16 + FRAME_SAMPLES * 4)) : null;
    const jpeg = buffer.slice(16 + (hasAudio ? FRAME_SAMPLES * 4 : 0));
    this.received++;
    this.arrivals.push(now);
    if (!idle && audioEnd > 0) {
      const sentAt = this.sendLog.find(([count]) => count >= audioEnd);
      if (sentAt) this.latencies.push([now, now - sentAt[1]]);
    }
    // when this frame plays: right after the previous one, or (after a gap) a little after now
    const t = this.context.currentTime;
    if (this.cursor < t + 0.02) this.cursor = t + PLAY_LEAD_S;
    const when = this.cursor;
    this.cursor += FRAME_SAMPLES / RATE;
    if (audio) {
      const buf = this.context.createBuffer(1, audio.length, RATE);
      buf.copyToChannel(audio, 0);
      const node = this.context.createBufferSource();
      node.buffer = buf;
      node.connect(this.gain);
      node.start(when);
    }
    const frame = { when, index, bitmap: null };
    this.queue.push(frame);
    createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }))
      .then((bitmap) => { frame.bitmap = bitmap; })
      .catch(() => { frame.bad = true; });
  }

  draw() {
    if (!this.context) return;
    const t = this.context.currentTime;
    let due = -1;
    for (let i = 0; i < this.queue.length && this.queue[i].when <= t; i++) due = i;
    if (due < 0) return;
    // the newest due frame that is decoded is drawn; the due ones before it were too late
    let pick = -1;
    for (let i = due; i >= 0; i--) if (this.queue[i].bitmap || this.queue[i].bad) { pick = i; break; }
    if (pick < 0) return;  // still decoding: wait for it
    const frames = this.queue.splice(0, pick + 1);
    const shown = frames.pop();
    this.late += frames.length;
    for (const f of frames) if (f.bitmap) f.bitmap.close();
    if (shown.bitmap) {
      const g = this.canvas.getContext("2d");
      g.drawImage(shown.bitmap, 0, 0, this.canvas.width, this.canvas.height);
      shown.bitmap.close();
      this.drawn++;
    }
  }

  tick() {
    const now = performance.now();
    this.arrivals = this.arrivals.filter((t) => now - t <= 2000);
    this.latencies = this.latencies.filter(([t]) => now - t <= 1000);
    this.fps = this.arrivals.length / 2;
    const sorted = this.latencies.map(([, ms]) => ms).sort((a, b) => a - b);
    if (sorted.length) this.latency = sorted[Math.floor(sorted.length / 2)];
    $("#live-fps").textContent = this.fps.toFixed(1);
    $("#live-latency").textContent = this.latency === null ? "-" : `${Math.round(this.latency)} ms`;
    $("#live-dropped").textContent = String(this.serverDropped + this.late);
    $("#live-frames").textContent = String(this.drawn);
  }

  // ends the audio; the server sends the last frames, then "end"
  stop() {
    if (this.stopping) return;
    this.stopping = true;
    if (this.mic) this.mic.stop();
    if (this.fileTimer) clearInterval(this.fileTimer);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      if (this.pending.length) this.send(this.pending);
      this.pending = new Float32Array(0);
      this.ws.send(JSON.stringify({ type: "stop" }));
      liveStatus("stopping: the last frames are coming");
      this.stopTimeout = setTimeout(() => this.close(), 10000);
    } else {
      this.close();
    }
  }

  finishWhenPlayed() {
    const wait = Math.max(0, (this.cursor - (this.context ? this.context.currentTime : 0)) * 1000) + 100;
    setTimeout(() => { this.close(); liveStopped(null); }, wait);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.stopTimeout);
    clearInterval(this.timer);
    clearInterval(this.drawTimer);
    if (this.raf) cancelAnimationFrame(this.raf);
    if (this.mic) this.mic.stop();
    if (this.fileTimer) clearInterval(this.fileTimer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    this.tick();
    if (this.context) this.context.close().catch(() => {});
  }
}

function liveStatus(text) { $("#live-status").textContent = text; }

function liveStopped(error) {
  const session = app.live;
  if (session) session.close();
  app.live = null;
  $("#live-start").disabled = false;
  $("#live-stop").disabled = true;
  liveStatus(session ? `stopped after ${session.drawn} frames` : "stopped");
  if (error) message($("#live-error"), error);
}

function setupLive() {
  const form = $("#live-form");
  wireSources(form, (source) => { form.play.checked = source !== "mic"; });
  form.play.addEventListener("change", () => {
    if (app.live && app.live.gain) app.live.gain.gain.value = form.play.checked ? 1 : 0;
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (app.live) return;
    message($("#live-error"), "");
    $("#live-start").disabled = true;
    liveStatus("starting…");
    const session = new LiveSession(form);
    app.live = session;
    for (const id of ["#live-fps", "#live-latency"]) $(id).textContent = "-";
    for (const id of ["#live-dropped", "#live-frames"]) $(id).textContent = "0";
    try {
      await session.start();
      $("#live-stop").disabled = false;
    } catch (err) {
      liveStopped(err.message || String(err));
    }
  });
  $("#live-stop").addEventListener("click", () => { if (app.live) app.live.stop(); });
}

// --- Train ------------------------------------------------------------------------------------------------

const train = { timer: null, states: {} };

function setupTrain() {
  const form = $("#train-form");
  wireSources(form);
  const info = app.info.train;
  for (const kind of info.features) form.features.append(el("option", { value: kind }, kind));
  for (const preset of info.motion_presets) form.motion_preset.append(el("option", { value: preset }, preset));
  for (const device of info.devices) form.device.append(el("option", { value: device }, device));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    startTraining().catch((err) => {
      show($("#train-upload"), false);
      message($("#train-error"), err.message || String(err));
    }).finally(() => { $("#train-go").disabled = false; });
  });
}

async function startTraining() {
  const form = $("#train-form");
  message($("#train-error"), "");
  const name = form.name.value.trim();
  if (!name) throw new ApiError("give the new person a name");
  const settings = {};
  for (const key of ["size", "render_size", "motion_steps", "render_steps", "sr_steps"]) {
    if (form[key].value !== "") settings[key] = Math.trunc(Number(form[key].value));
  }
  for (const key of ["features", "motion_preset", "device"]) if (form[key].value) settings[key] = form[key].value;
  if (form.force.checked) settings.force = true;
  const request = { name, settings };
  $("#train-go").disabled = true;
  if (sourceOf(form) === "path") {
    request.path = form.path.value.trim();
    if (!request.path) throw new ApiError("give the video's path on the server");
  } else {
    const file = form.file.files[0];
    if (!file) throw new ApiError("choose the video of the person first");
    const bar = $("#train-upload");
    show(bar, true);
    const record = await upload(file, "video", file.name, (f) => { bar.value = f; });
    show(bar, false);
    request.video = record.id;
  }
  await postJSON("/api/train", request);
  await refreshTrainJobs();
}

// Shows the training jobs, again every second while one runs (every 5 s while the tab is open): one chain of
// timers however often it is called.
async function refreshTrainJobs() {
  clearTimeout(train.timer);
  train.timer = null;
  let jobs;
  try {
    jobs = (await api("/api/jobs")).jobs.filter((j) => j.kind === "train");
  } catch (e) {
    message($("#train-error"), e.message);
    if (!train.timer) train.timer = setTimeout(refreshTrainJobs, 5000);
    return;
  }
  const list = $("#train-jobs");
  list.replaceChildren(...(jobs.length ? jobs.slice(0, 10).map(trainCard) : [el("p", { class: "muted" }, "No training yet.")]));
  let newPerson = false;
  for (const job of jobs) {
    if (train.states[job.id] && train.states[job.id] !== "done" && job.state === "done") newPerson = true;
    train.states[job.id] = job.state;
  }
  if (newPerson) await loadPeople();
  const active = jobs.some((j) => ["queued", "running"].includes(j.state));
  const visible = !$("#train").hidden;
  if ((active || visible) && !train.timer) train.timer = setTimeout(refreshTrainJobs, active ? 1000 : 5000);
}

function trainCard(job) {
  const card = el("div", { class: `job ${job.state}`, "data-job": job.id });
  card.append(el("h3", {}, job.title, " ", el("span", { class: `state ${job.state}` }, job.state)));
  if (job.state === "running" || job.state === "queued") {
    card.append(el("progress", { max: "1", value: String(job.progress || 0) }));
  }
  const line = [job.detail, job.eta ? `${duration(job.eta)} left in this step` : ""].filter(Boolean).join(" · ");
  if (line) card.append(el("p", { class: "muted" }, line));
  if (job.stages && job.stages.length) {
    const table = el("table", { class: "stages" },
      el("tr", {}, el("th", {}, "stage"), el("th", {}, "state"), el("th", {}, "step"), el("th", {}, "progress"), el("th", {}, "time left")));
    for (const s of job.stages) {
      const fraction = s.total ? s.n / s.total : null;
      table.append(el("tr", {}, el("td", {}, s.name), el("td", {}, s.state), el("td", {}, s.step || ""),
        el("td", {}, s.total ? `${s.n}/${s.total} (${percent(fraction)})` : (s.n !== undefined ? String(s.n) : "")),
        el("td", {}, s.state === "running" ? duration(s.left) : "")));
    }
    card.append(table);
  }
  if (job.error) card.append(el("p", { class: "message error" }, job.error));
  if (job.state === "done" && job.result && job.result.person) {
    card.append(el("p", { class: "message ok" }, `${job.result.person} is ready: pick it on Speak or Live.`));
  }
  const actions = el("div", { class: "actions" });
  if (job.state === "running" || job.state === "queued") {
    actions.append(el("button", { type: "button", onclick: () => jobAction(job.id, "cancel") }, "Cancel"));
  }
  if (job.resumable) {
    actions.append(el("button", { type: "button", onclick: () => jobAction(job.id, "resume") }, "Resume"));
  }
  if (actions.childElementCount) card.append(actions);
  return card;
}

async function jobAction(id, action) {
  message($("#train-error"), "");
  try {
    await postJSON(`/api/jobs/${id}/${action}`);
  } catch (e) {
    message($("#train-error"), e.message);
  }
  await refreshTrainJobs();
}

// --- Evaluate ---------------------------------------------------------------------------------------------

const evaluation = { job: null };

function setupEvaluate() {
  const form = $("#eval-form");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    runEvaluation().catch((err) => message($("#eval-error"), err.message || String(err)))
      .finally(() => { $("#eval-go").disabled = false; show($("#eval-cancel"), false); });
  });
  $("#eval-cancel").addEventListener("click", () => {
    if (evaluation.job) postJSON(`/api/jobs/${evaluation.job}/cancel`).catch(() => {});
  });
}

async function runEvaluation() {
  const form = $("#eval-form");
  message($("#eval-error"), "");
  const person = form.person.value;
  const option = form.person.selectedOptions[0];
  if (!person || !option || option.disabled) {
    throw new ApiError("no person here can be evaluated: train one on the Train tab first");
  }
  $("#eval-go").disabled = true;
  const status = $("#eval-status"), bar = $("#eval-progress");
  const audio = [];
  for (const file of form.files.files) {
    status.textContent = `uploading ${file.name}…`;
    audio.push((await upload(file, "audio", file.name)).id);
  }
  const request = { person, audio };
  if (form.frames.value !== "") request.frames = Math.trunc(Number(form.frames.value));
  const job = await postJSON("/api/evaluate", request);
  evaluation.job = job.id;
  show($("#eval-cancel"), true);
  show(bar, true);
  const ended = await watchJob(job.id, (j) => {
    bar.value = j.progress || 0;
    status.textContent = `${j.state}: ${j.detail || ""}${j.eta ? `, ${duration(j.eta)} left` : ""}`;
  });
  evaluation.job = null;
  show(bar, false);
  status.textContent = ended.state;
  if (ended.state === "done") await showReport(ended);
  else if (ended.error) message($("#eval-error"), ended.error);
}

async function showReport(job) {
  const box = $("#eval-report");
  const files = job.result.files || [];
  const out = [];
  if (files.includes("report.md")) {
    const response = await fetch(`/api/jobs/${job.id}/files/report.md`, { credentials: "same-origin" });
    out.push(markdown(await response.text(), job.id, files));
  }
  for (const name of files.filter((f) => f.endsWith(".png"))) {
    out.push(el("figure", {}, el("img", { src: `/api/jobs/${job.id}/files/${encodeURIComponent(name)}`, alt: name }),
                el("figcaption", {}, name)));
  }
  out.push(el("p", {}, el("a", { href: `/api/jobs/${job.id}/report`, target: "_blank" }, "report.json")));
  box.replaceChildren(...out);
}

// A small Markdown reader for the evaluation report: headings, tables, lists, paragraphs, `code`, **bold**.
// Built from DOM nodes (text is never parsed as HTML).
function markdown(text, jobId, files) {
  const root = el("div", { class: "report" });
  const lines = text.split("\n");
  let i = 0;
  const inline = (s) => {
    const node = el("span");
    for (const part of s.split(/(`[^`]+`|\*\*[^*]+\*\*)/)) {
      if (part.startsWith("`") && part.endsWith("`") && part.length > 1) node.append(el("code", {}, part.slice(1, -1)));
      else if (part.startsWith("**") && part.endsWith("**") && part.length > 3) node.append(el("strong", {}, part.slice(2, -2)));
      else node.append(part);
    }
    return node;
  };
  while (i < lines.length) {
    const line = lines[i];
    const image = line.match(/^!\[([^\]]*)\]\(([^)]+)\)\s*$/);
    if (/^#{1,6} /.test(line)) {
      const level = Math.min(6, line.match(/^#+/)[0].length + 2);
      root.append(el(`h${level}`, {}, inline(line.replace(/^#+ /, ""))));
      i++;
    } else if (image) {
      if (files.includes(image[2])) root.append(el("img", { src: `/api/jobs/${jobId}/files/${encodeURIComponent(image[2])}`, alt: image[1] }));
      i++;
    } else if (line.startsWith("|")) {
      const table = el("table");
      let header = true;
      while (i < lines.length && lines[i].startsWith("|")) {
        const cells = lines[i].trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
        if (!cells.every((c) => /^:?-+:?$/.test(c))) {
          table.append(el("tr", {}, ...cells.map((c) => el(header ? "th" : "td", {}, inline(c)))));
          header = false;
        }
        i++;
      }
      root.append(table);
    } else if (/^\s*[-*] /.test(line)) {
      const list = el("ul");
      while (i < lines.length && /^\s*[-*] /.test(lines[i])) { list.append(el("li", {}, inline(lines[i].replace(/^\s*[-*] /, "")))); i++; }
      root.append(list);
    } else if (line.trim() === "") {
      i++;
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() !== "" && !/^(#|\||\s*[-*] |!\[)/.test(lines[i])) para.push(lines[i++]);
      root.append(el("p", {}, inline(para.join(" "))));
    }
  }
  return root;
}

// --- start ------------------------------------------------------------------------------------------------

async function main() {
  for (const button of $$("#tabs [data-tab]")) button.addEventListener("click", () => selectTab(button.dataset.tab));
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
  try {
    app.info = await api("/api/info");
    await loadPeople();
  } catch (e) {
    message($("#banner"), e.message);
    return;
  }
  $("#version").textContent = `geneface ${app.info.version} · ${app.info.device}`;
  if (!app.info.espeak) {
    const radio = $("#speak-form input[name=source][value=text]");
    radio.disabled = true;
    radio.parentElement.title = "needs espeak-ng on the server";
    show($("#text-note"), true);
  }
  setupSpeak();
  setupLive();
  setupTrain();
  setupEvaluate();
  selectTab(location.hash.slice(1) || "speak");
  refreshTrainJobs();
}

main();
