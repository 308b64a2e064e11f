// Track painting canvas (the body of a gr.HTML js_on_load: `element` and `server` are given).
// Each stroke keeps its points as [x, y, t] (canvas px, ms since the stroke began), so drawing speed
// becomes motion speed. Strokes go to Python through `server.set_tracks` (a server function, so
// they never wait behind a running stream in the queue); while a stroke is being drawn during a
// stream it is sent every SEND_MS, so the stream follows the pen within a chunk.
const SEND_MS = 150;
const COLORS = { "pre-drawn": "#1e90ff", live: "#2ecc40", static: "#ff4136" };  // MotionStream-style
const canvas = element.querySelector("canvas");
const ctx = canvas.getContext("2d");
const msg = element.querySelector(".sc-msg");
const list = element.querySelector(".sc-list");
const modeBtn = element.querySelector(".sc-mode");
let strokes = [];          // {id, points, static, start?, role}
let current = null;        // the stroke under the pen
let selected = null;       // id of the selected stroke (dragging it moves it)
let dragFrom = null;
let anchorMode = false;
let lastSend = 0;
let nextId = 1;
// This page's id: Python finds the page's stream by it. It is the component's value (so every event
// carries it) and goes with every server call (server functions get no Gradio session).
const cid = "p" + Math.random().toString(36).slice(2) + Date.now().toString(36);

const STORE = "streamer-strokes";  // painted paths survive a reload (this browser only)
let shownAt = 0;

function show(text, bad) {
  msg.textContent = text;
  msg.classList.toggle("sc-bad", !!bad);
  shownAt = performance.now();
  // a passing note ("... from the next chunk") goes stale: fall back to the plain count
  if (!bad) setTimeout(() => {
    if (performance.now() - shownAt >= 5900 && !msg.classList.contains("sc-bad"))
      msg.textContent = strokes.length ? `${strokes.length} track(s)` : "drag to paint a path, click for an anchor";
  }, 6000);
}

function save() {
  try { localStorage.setItem(STORE, JSON.stringify(strokes.map(s => ({ id: s.id, points: s.points, static: s.static })))); }
  catch (e) { /* storage full or blocked: painting still works */ }
}

function setAspect(w, h) {
  // The canvas always shows the whole frame; its own pixels are 384 wide, points scale with it.
  const cw = 384, ch = Math.round(384 * h / w);
  if (cw === canvas.width && ch === canvas.height) return;
  const sx = cw / canvas.width, sy = ch / canvas.height;
  for (const s of strokes) for (const p of s.points) { p[0] *= sx; p[1] *= sy; }
  canvas.width = cw; canvas.height = ch;
}

function pos(ev) {
  const r = canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) * canvas.width / r.width;
  const y = (ev.clientY - r.top) * canvas.height / r.height;
  // the pen may leave the canvas while held: keep the point on the frame's edge
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

function hit(x, y) {
  let best = null, bestD = 10;
  for (const s of strokes) for (const p of s.points) {
    const d = Math.hypot(p[0] - x, p[1] - y);
    if (d < bestD) { bestD = d; best = s.id; }
  }
  return best;
}

async function send() {
  lastSend = performance.now();
  save();
  const all = current ? strokes.concat([current]) : strokes;
  const payload = all.map(s => ({ id: s.id, points: s.points, static: s.static, start: s.start }));
  let res;
  try {
    res = await server.set_tracks({ cid, strokes: payload, canvas: [canvas.width, canvas.height] });
  } catch (e) {
    show("could not reach the server: " + e, true);
    return;
  }
  if (!res.ok) { show(res.message, true); return; }
  for (const s of all) s.role = res.roles[s.id] || s.role;
  if (res.size) setAspect(res.size[0], res.size[1]);
  show(res.message, false);
  renderList();
}

function renderList() {
  list.innerHTML = "";
  strokes.forEach((s, i) => {
    const row = document.createElement("span");
    row.className = "sc-track" + (s.id === selected ? " sc-selected" : "");
    row.style.borderColor = COLORS[s.role || "pre-drawn"];
    row.textContent = `${i + 1} ${s.static ? "anchor" : s.role || "path"}`;
    row.onclick = () => { selected = s.id; renderList(); };
    const del = document.createElement("button");
    del.textContent = "×";
    del.title = "delete this track";
    del.onclick = (e) => { e.stopPropagation(); strokes = strokes.filter(t => t !== s); send(); };
    row.appendChild(del);
    list.appendChild(row);
  });
}

canvas.addEventListener("pointerdown", (ev) => {
  canvas.setPointerCapture(ev.pointerId);
  const [x, y] = pos(ev);
  const id = hit(x, y);
  if (id !== null && id === selected && !anchorMode) {  // drag the selected track somewhere else
    dragFrom = [x, y];
    return;
  }
  selected = null;
  current = { id: "s" + (nextId++), points: [[x, y, 0]], static: anchorMode, role: "pre-drawn", t0: performance.now() };
});

canvas.addEventListener("pointermove", (ev) => {
  const [x, y] = pos(ev);
  if (dragFrom) {
    const s = strokes.find(t => t.id === selected);
    for (const p of s.points) { p[0] = Math.min(Math.max(p[0] + x - dragFrom[0], 0), canvas.width); p[1] = Math.min(Math.max(p[1] + y - dragFrom[1], 0), canvas.height); }
    dragFrom = [x, y];
    return;
  }
  if (!current || current.static) return;
  current.points.push([x, y, performance.now() - current.t0]);
  if (performance.now() - lastSend > SEND_MS) send();
});

canvas.addEventListener("pointerup", (ev) => {
  if (dragFrom) { dragFrom = null; send(); return; }
  if (!current) return;
  const s = current;
  current = null;
  delete s.t0;
  strokes.push(s);
  selected = s.id;
  send();
});

element.querySelector(".sc-clear").onclick = () => { strokes = []; selected = null; send(); };
element.querySelector(".sc-delete").onclick = () => {
  strokes = selected ? strokes.filter(s => s.id !== selected) : strokes.slice(0, -1);
  selected = null;
  send();
};
modeBtn.onclick = () => {
  anchorMode = !anchorMode;
  modeBtn.textContent = anchorMode ? "mode: anchor" : "mode: path";
};

// The newest frame that finished loading: the live <img> is blank while its next frame loads.
const backdrop = document.createElement("canvas");
let backdropSrc = "";

function draw() {
  if (props.value !== cid) props.value = cid;  // set here: a value set during load is overwritten
  const img = document.querySelector("#sc-live img");
  if (img && img.complete && img.naturalWidth && img.src !== backdropSrc) {
    setAspect(img.naturalWidth, img.naturalHeight);  // the canvas takes the stream's own aspect ratio
    backdrop.width = img.naturalWidth;
    backdrop.height = img.naturalHeight;
    backdrop.getContext("2d").drawImage(img, 0, 0);
    backdropSrc = img.src;
  }
  ctx.fillStyle = "#202020";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (backdropSrc) ctx.drawImage(backdrop, 0, 0, canvas.width, canvas.height);
  const all = current ? strokes.concat([current]) : strokes;
  for (const s of all) {
    const color = COLORS[s.static ? "static" : s.role || "pre-drawn"];
    ctx.strokeStyle = ctx.fillStyle = color;
    ctx.lineWidth = s.id === selected ? 4 : 2.5;
    const p = s.points;
    if (s.static || p.length === 1) {
      ctx.beginPath(); ctx.arc(p[0][0], p[0][1], 6, 0, 2 * Math.PI); ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(p[0][0], p[0][1]);
    for (const q of p) ctx.lineTo(q[0], q[1]);
    ctx.stroke();
    ctx.beginPath(); ctx.arc(p[0][0], p[0][1], 4, 0, 2 * Math.PI); ctx.fill();
    const a = p[Math.max(0, p.length - 4)], b = p[p.length - 1];  // arrow head: where the path goes
    const ang = Math.atan2(b[1] - a[1], b[0] - a[0]);
    ctx.beginPath();
    ctx.moveTo(b[0], b[1]);
    ctx.lineTo(b[0] - 10 * Math.cos(ang - 0.5), b[1] - 10 * Math.sin(ang - 0.5));
    ctx.lineTo(b[0] - 10 * Math.cos(ang + 0.5), b[1] - 10 * Math.sin(ang + 0.5));
    ctx.fill();
  }
  requestAnimationFrame(draw);
}

// What Python (imports) and tests reach: load strokes (canvas px) and read them back.
window.streamerCanvas = element.streamerCanvas = {
  load(items) {
    if (!Array.isArray(items)) return;
    strokes = items.map(s => ({ ...s, role: s.role || "pre-drawn" }));
    selected = null;
    send();
  },
  strokes: () => strokes,
  size: () => [canvas.width, canvas.height],
  cid,
};

server.canvas_info({ cid }).then((info) => {
  setAspect(info.size[0], info.size[1]);
  show(info.message, false);
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { saved = null; }
  if (Array.isArray(saved) && saved.length) {
    for (const s of saved) { const n = parseInt(String(s.id).slice(1)); if (n >= nextId) nextId = n + 1; }
    window.streamerCanvas.load(saved);
  }
});
requestAnimationFrame(draw);
