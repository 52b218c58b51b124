// The spiga web page: send an image to POST /v1/align and draw the answer.
// Plain browser JavaScript, no build step. Text from the server is only ever set with
// textContent (never innerHTML): file names come back in the JSON.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = { model: null, bitmap: null, record: null };

  function authHeaders() {
    const key = $("api-key").value.trim();
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

  async function alignFile(file) {
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
    showTable(state.record.faces);
    const count = state.record.faces.length;
    setStatus(`${count} face${count === 1 ? "" : "s"} in ${file.name} ` +
              `(${state.record.width}x${state.record.height})`, "done");
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
    const sx = width / record.width;
    const sy = height / record.height;
    const scale = Math.max(1, Math.max(width, height) / 640);
    const radius = Math.max(1.5, 1.5 * scale);
    const line = Math.max(1, Math.round(scale));
    const model = state.model || {};
    const colours = model.point_colours || [];
    const axesColours = model.axes_colours || ["#ff0000", "#00ff00", "#0000ff"];
    let drawn = 0;
    record.faces.forEach((face, index) => {
      if ($("show-boxes").checked) {
        const [x, y, w, h] = face.box;
        ctx.strokeStyle = "#ffffff";
        ctx.lineWidth = line;
        ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
        ctx.fillStyle = "#ffffff";
        ctx.font = `${Math.round(12 * scale)}px sans-serif`;
        ctx.fillText(String(index), x * sx, Math.max(10 * scale, y * sy - 4));
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
      record.faces.forEach((face) => {
        face.landmarks.forEach(([x, y], i) => {
          ctx.fillStyle = colours[i] || "#ff00ff";
          ctx.beginPath();
          ctx.arc(x * sx, y * sy, radius, 0, 2 * Math.PI);
          ctx.fill();
          drawn += 1;
        });
      });
    }
    overlay.dataset.faces = String(record.faces.length);
    overlay.dataset.landmarks = String(drawn);
  }

  function showTable(faces) {
    const body = $("faces").querySelector("tbody");
    body.replaceChildren();
    faces.forEach((face, index) => {
      const row = document.createElement("tr");
      const cells = [String(index), face.headpose.yaw.toFixed(1), face.headpose.pitch.toFixed(1),
                     face.headpose.roll.toFixed(1), face.score === undefined ? "given" : face.score.toFixed(2)];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      body.appendChild(row);
    });
    $("faces").hidden = faces.length === 0;
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
      $(id).addEventListener("change", draw);
    }
    $("api-key").addEventListener("change", loadModel);
    loadModel();
  }

  setUp();
})();
