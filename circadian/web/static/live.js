// The live training page: follows control/status.json and the cycle's metrics through server-sent
// events, draws the loss chart, and steers the sleep with the same control files as `circadian ctl`.
const fmt = v => v === null || v === undefined ? "n/a" : (typeof v === "number" ? (Math.abs(v) < 1e4 ? v.toFixed(3) : v.toFixed(0)) : v);

function chart(curve) {
  const target = document.getElementById("chart");
  const train = curve.filter(e => e.train_loss !== null && e.train_loss !== undefined);
  const val = curve.filter(e => e.val_loss !== null && e.val_loss !== undefined);
  if (!train.length) { target.innerHTML = "<p class='muted'>no training steps yet</p>"; return; }
  const all = train.map(e => e.train_loss).concat(val.map(e => e.val_loss));
  const log = Math.min(...all) > 0 && Math.max(...all) / Math.min(...all) > 30;  // as the report's charts
  const y = v => log ? Math.log10(v) : v;
  const xs = train.map(e => e.step).concat(val.map(e => e.step));
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const ys = all.map(y), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const sx = x => 50 + (x - x0) / (x1 - x0) * 560, sy = v => 190 - (y(v) - y0) / (y1 - y0) * 170;
  const line = (rows, key, color, name) =>
    `<polyline id="line-${name}" fill="none" stroke="${color}" stroke-width="2" points="${rows.map(e => sx(e.step).toFixed(1) + "," + sy(e[key]).toFixed(1)).join(" ")}"/>`;
  const top = log ? Math.pow(10, y1) : y1, bottom = log ? Math.pow(10, y0) : y0;
  target.innerHTML = `<svg width="760" height="220" id="loss-chart" data-points="${train.length}" role="img" aria-label="loss by step">
    <text x="2" y="24" font-size="10">${top.toPrecision(3)}</text><text x="2" y="192" font-size="10">${bottom.toPrecision(3)}</text>
    <text x="50" y="214" font-size="10">step ${x0}</text><text x="560" y="214" font-size="10">step ${x1}</text>
    ${log ? '<text x="2" y="110" font-size="10">log</text>' : ""}
    ${line(train, "train_loss", "#2f6fde", "train")}${val.length ? line(val, "val_loss", "#d9480f", "val") : ""}
    <rect x="625" y="20" width="10" height="3" fill="#2f6fde"/><text x="640" y="25" font-size="11">train loss</text>
    <rect x="625" y="38" width="10" height="3" fill="#d9480f"/><text x="640" y="43" font-size="11">validation loss</text></svg>`;
}

function show(d) {
  const s = d.status;
  const parts = [`cycle <b>${s.cycle_id ?? "none"}</b>`,
    `state <b id="live-state">${s.running ? s.state : (s.state ?? "idle") + " (not running)"}</b>`, `stage ${s.stage ?? "-"}`];
  if (s.step !== undefined) parts.push(`dataset ${s.dataset} (${s.dataset_index}/${s.datasets})`,
    `step <b id="live-step">${s.step}</b>/${s.total_steps}`, `loss ${fmt(s.train_loss)}`, `best val ${fmt(s.best_val_loss)}`,
    `${fmt(s.tokens_per_second)} tokens/s`, `ETA ${s.eta_seconds === null || s.eta_seconds === undefined ? "n/a" : Math.round(s.eta_seconds) + " s"}`);
  if (s.flags && s.flags.length) parts.push(`requested: ${s.flags.join(", ")}`);
  document.getElementById("live-status").innerHTML = parts.join(" · ");
  chart(d.curve);
}

const source = new EventSource("/api/live/stream");
source.onmessage = e => show(JSON.parse(e.data));
document.querySelectorAll("button[data-action]").forEach(b => b.onclick = async () => {
  const r = await fetch("/api/ctl/" + b.dataset.action, {method: "POST", headers: {"X-Circadian": "1"}});
  const j = await r.json();
  document.getElementById("ctl-result").textContent = j.done || j.error;
});
