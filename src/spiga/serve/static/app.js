// The spiga web page: send an image to POST /v1/align and draw the answer, or stream the
// camera to the WebSocket /v1/stream and draw the tracked faces over the live video.
// Plain browser JavaScript, no build step. Text from the server is only ever set with
// textContent (never innerHTML): file names come back in the JSON.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = { model: null, bitmap: null, record: null };
  // the camera mode: its media stream, socket, last answer, and counters the page shows
  const live = { stream: null, socket: null, message: null, frames: 0, drawn: 0, ids: new Set(),
                 started: 0, grab: document.createElement("canvas") };
  const MAX_FRAME_WIDTH = 640; // frames are scaled down to this width before they are sent

  function apiKey() {
    return $("api-key").value.trim();
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.dataset.state = kind;
  }

  async function loadModel() {
    try {
      const response = await fetch("/v1/models", { headers: authHeaders() });
      const body = await response.json();
      if (!response.ok) {
        $("model-info").textContent = body.error ? `${body.error.code}: ${body.error.message}` : "no model info";
        return;
      }
      const m = body.models[0];
      state.model = m;
      $("model-info").textContent =
        `model ${m.id}: ${m.landmarks} landmarks (${m.landmark_set}), detector ${m.detector || "none"}, ` +
        `device ${m.device}; images up to ${body.limits.max_image_mb} MiB`;
    } catch (error) {
      $("model-info").textContent = `cannot reach the server (${error})`;
    }
  }

  // ------------------------------------------------------------------ one image

  async function alignFile(file) {
    if (live.stream) stopCamera();
    setStatus(`Aligning ${file.name}…`, "busy");
    $("faces").hidden = true;
    let bitmap = null;
    try {
      // EXIF orientation applied, as the server does, so coordinates agree
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (error) {
      bitmap = null; // the browser cannot show it; the server will say what is wrong
    }
    if (!state.model) await loadModel();
    const form = new FormData();
    form.append("image", file, file.name);
    const boxes = $("boxes").value.trim();
    if (boxes) form.append("boxes", boxes);
    let response;
    let body;
    try {
      response = await fetch("/v1/align", { method: "POST", body: form, headers: authHeaders() });
      body = await response.json();
    } catch (error) {
      setStatus(`request failed: ${error}`, "error");
      return;
    }
    $("json").textContent = JSON.stringify(body, null, 1);
    state.bitmap = bitmap;
    state.record = response.ok ? body.images[0] : null;
    draw();
    if (!response.ok) {
      const error = body.error || {};
      setStatus(`${error.code || response.status}: ${error.message || "error"}`, "error");
      return;
    }
    showTable(state.record.faces, false);
    const count = state.record.faces.length;
    const dropped = state.record.faces_dropped ? ` (${state.record.faces_dropped} more left out)` : "";
    setStatus(`${count} face${count === 1 ? "" : "s"}${dropped} in ${file.name} ` +
              `(${state.record.width}x${state.record.height})`, "done");
  }

  // Draws boxes, pose axes and landmarks of `faces` (server pixels times sx, sy); returns
  // the number of landmarks drawn.
  function drawFaces(ctx, faces, sx, sy, width, height, labelWithId) {
    const scale = Math.max(1, Math.max(width, height) / 640);
    const radius = Math.max(1.5, 1.5 * scale);
    const line = Math.max(1, Math.round(scale));
    const model = state.model || {};
    const colours = model.point_colours || [];
    const axesColours = model.axes_colours || ["#ff0000", "#00ff00", "#0000ff"];
    let drawn = 0;
    faces.forEach((face, index) => {
      if ($("show-boxes").checked) {
        const [x, y, w, h] = face.box;
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = line;
        ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
        ctx.fillStyle = "#ffffff";
        ctx.font = `${Math.round(12 * scale)}px sans-serif`;
        const label = labelWithId && face.id !== undefined ? `id ${face.id}` : String(index);
        ctx.fillText(label, x * sx, Math.max(10 * scale, y * sy - 4));
      }
      if ($("show-axes").checked && face.pose_axes && face.pose_axes.length === 4) {
        const [origin, ...ends] = face.pose_axes;
        ends.forEach((end, axis) => {
          ctx.strokeStyle = axesColours[axis];
          ctx.lineWidth = line + 1;
          ctx.beginPath();
          ctx.moveTo(origin[0] * sx, origin[1] * sy);
          ctx.lineTo(end[0] * sx, end[1] * sy);
          ctx.stroke();
        });
      }
    });
    if ($("show-landmarks").checked) {
      // landmarks last, on top of boxes and axes
      faces.forEach((face) => {
        face.landmarks.forEach(([x, y], i) => {
          ctx.fillStyle = colours[i] || "#ff00ff";
          ctx.beginPath();
          ctx.arc(x * sx, y * sy, radius, 0, 2 * Math.PI);
          ctx.fill();
          drawn += 1;
        });
      });
    }
    return drawn;
  }

  function draw() {
    const photo = $("photo");
    const overlay = $("overlay");
    const bitmap = state.bitmap;
    const record = state.record;
    const width = bitmap ? bitmap.width : (record ? record.width : 1);
    const height = bitmap ? bitmap.height : (record ? record.height : 1);
    for (const canvas of [photo, overlay]) {
      canvas.width = width;
      canvas.height = height;
    }
    const picture = photo.getContext("2d");
    if (bitmap) picture.drawImage(bitmap, 0, 0);
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    overlay.dataset.faces = "0";
    overlay.dataset.landmarks = "0";
    if (!record) return;
    // server pixels -> canvas pixels (equal unless the browser sized the image differently)
    const drawn = drawFaces(ctx, record.faces, width / record.width, height / record.height, width, height, false);
    overlay.dataset.faces = String(record.faces.length);
    overlay.dataset.landmarks = String(drawn);
  }

  function showTable(faces, byId) {
    const body = $("faces").querySelector("tbody");
    body.replaceChildren();
    faces.forEach((face, index) => {
      const row = document.createElement("tr");
      const cells = [byId && face.id !== undefined ? `id ${face.id}` : String(index),
                     face.headpose.yaw.toFixed(1), face.headpose.pitch.toFixed(1), face.headpose.roll.toFixed(1),
                     face.score === undefined ? "given" : face.score.toFixed(2)];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      body.appendChild(row);
    });
    $("faces").hidden = faces.length === 0;
  }

  // ------------------------------------------------------------------ the camera

  async function startCamera() {
    if (live.stream) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("this browser gives no camera access here (it needs https or localhost)", "error");
      return;
    }
    try {
      live.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (error) {
      setStatus(`no camera: ${error.message || error}`, "error");
      return;
    }
    if (!state.model) await loadModel();
    const video = $("camera");
    video.srcObject = live.stream;
    await video.play();
    Object.assign(live, { message: null, frames: 0, drawn: 0, ids: new Set(), started: performance.now() });
    $("photo").hidden = true;
    video.hidden = false;
    $("camera-start").disabled = true;
    $("camera-stop").disabled = false;
    $("overlay").dataset.liveFrames = "0";
    $("overlay").dataset.liveIds = "[]";
    setStatus("Connecting…", "busy");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
    socket.binaryType = "arraybuffer";
    live.socket = socket;
    socket.addEventListener("open", () => {
      const start = { type: "start" };
      if (apiKey()) start.api_key = apiKey();
      socket.send(JSON.stringify(start));
    });
    socket.addEventListener("message", (event) => onStreamMessage(socket, event));
    socket.addEventListener("close", (event) => {
      if (live.socket !== socket) return;
      live.socket = null;
      if (live.stream) {
        setStatus(`stream closed (${event.code})${event.reason ? ": " + event.reason : ""}`,
                  event.code === 1000 ? "done" : "error");
        stopCamera();
      }
    });
  }

  function stopCamera() {
    const socket = live.socket;
    live.socket = null;
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "stop" }));
      socket.close(1000);
    }
    if (live.stream) live.stream.getTracks().forEach((track) => track.stop());
    live.stream = null;
    $("camera").srcObject = null;
    $("camera").hidden = true;
    $("photo").hidden = false;
    $("camera-start").disabled = false;
    $("camera-stop").disabled = true;
    if ($("status").dataset.state === "busy") {
      setStatus(`camera stopped after ${live.frames} frames`, "done");
    }
  }

  // Sends the video's current frame: 8 bytes of capture time (ms), then a JPEG.
  function sendFrame(socket) {
    const video = $("camera");
    if (live.socket !== socket || socket.readyState !== WebSocket.OPEN) return;
    if (!video.videoWidth) {
      setTimeout(() => sendFrame(socket), 50);
      return;
    }
    const scale = Math.min(1, MAX_FRAME_WIDTH / video.videoWidth);
    const grab = live.grab;
    grab.width = Math.round(video.videoWidth * scale);
    grab.height = Math.round(video.videoHeight * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    const time = performance.now();
    grab.toBlob(async (blob) => {
      if (!blob) return;
      const image = new Uint8Array(await blob.arrayBuffer());
      if (live.socket !== socket || socket.readyState !== WebSocket.OPEN) return; // stopped meanwhile
      const frame = new Uint8Array(8 + image.length);
      new DataView(frame.buffer).setFloat64(0, time, true);
      frame.set(image, 8);
      socket.send(frame);
    }, "image/jpeg", 0.85);
  }

  function onStreamMessage(socket, event) {
    if (live.socket !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    if (message.type === "ready") {
      setStatus(`streaming to model ${message.model}…`, "busy");
      sendFrame(socket);
      return;
    }
    if (message.type === "faces") {
      live.message = message;
      drawLive();
      $("json").textContent = JSON.stringify(message, null, 1);
      showTable(message.faces, true);
      const seconds = (performance.now() - live.started) / 1000;
      $("camera-info").textContent = `${live.frames} frames, ${(live.frames / seconds).toFixed(1)} per second`;
      sendFrame(socket); // the next frame only after this answer: frames never queue up
      return;
    }
    // skipped (the server is busy: wait as it asks) or a bad frame (try the next one)
    setStatus(`frame ${message.frame}: ${message.code}: ${message.message}`, "busy");
    const wait = message.type === "skipped" ? 1000 * (message.retry_after || 1) : 100;
    setTimeout(() => sendFrame(socket), wait);
  }

  function drawLive() {
    const overlay = $("overlay");
    const message = live.message;
    overlay.width = message.width;
    overlay.height = message.height;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const drawn = drawFaces(ctx, message.faces, 1, 1, message.width, message.height, true);
    live.frames += 1;
    if (drawn > 0) live.drawn += 1;
    message.faces.forEach((face) => live.ids.add(face.id));
    overlay.dataset.faces = String(message.faces.length);
    overlay.dataset.landmarks = String(drawn);
    overlay.dataset.liveFrames = String(live.drawn);
    overlay.dataset.liveIds = JSON.stringify([...live.ids].sort((a, b) => a - b));
  }

  function setUp() {
    const drop = $("drop");
    $("file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) alignFile(file);
    });
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) alignFile(file);
    });
    drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") $("file").click();
    });
    for (const id of ["show-boxes", "show-landmarks", "show-axes"]) {
      $(id).addEventListener("change", () => (live.stream && live.message ? null : draw()));
    }
    $("camera-start").addEventListener("click", startCamera);
    $("camera-stop").addEventListener("click", stopCamera);
    $("api-key").addEventListener("change", loadModel);
    loadModel();
  }

  setUp();
})();
