"""`circadian dashboard`: a local web page over the home (starlette + uvicorn), bound to 127.0.0.1.

Pages: overview, live training (server-sent events from `control/status.json` and the cycle's
metrics; pause / stop / skip buttons write the same control files as `circadian ctl`), the
learning-evolution browser, cycles (choices, regret, the integrity debug panel) and adapters
(manifests, comparison, rollback with a confirmation). Every table links to its CSV and JSON.
Requests whose Host header is not the address it serves are refused (no DNS-rebinding access to
the conversations), and state-changing requests must be POSTs from the page itself.
"""

from __future__ import annotations

import asyncio
import html
import json
from urllib.parse import urlencode, urlparse

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from circadian.night import control
from circadian.store import adapters
from circadian.web import views as data
from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.paths import Paths

NAV = [("/", "Overview"), ("/live", "Live training"), ("/evolution", "Evolution"), ("/cycles", "Cycles"),
       ("/adapters", "Adapters")]
CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#222}nav{background:#223;padding:.6em 1em}
nav a{color:#dde;margin-right:1.2em;text-decoration:none}nav a.on{color:#fff;font-weight:bold}
main{padding:1em 1.5em}table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;
padding:.25em .5em;text-align:left;font-size:.9em;vertical-align:top}th{background:#eef}.export{font-size:.8em}
.ok{color:#070}.bad{color:#a00}.muted{color:#777}button{margin-right:.5em;padding:.3em .9em}
.panel{background:#f6f6f6;border:1px solid #ddd;padding:.5em 1em;margin:1em 0}"""


def _e(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def page(title: str, active: str, body: str) -> HTMLResponse:
    nav = "".join(f'<a href="{href}" class="{"on" if href == active else ""}">{name}</a>' for href, name in NAV)
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>circadian · {_e(title)}</title>"
                        f"<style>{CSS}</style></head><body><nav>{nav}</nav><main><h1>{_e(title)}</h1>{body}</main>"
                        "</body></html>")


def table(rows: list[dict], *, name: str, params: dict | None = None, columns: list[str] | None = None,
          links: dict | None = None) -> str:
    """An HTML table with CSV / JSON export links for the same rows."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    query = ("?" + urlencode({k: v for k, v in (params or {}).items() if v})) if params else ""
    export = (f'<div class="export">export: <a href="/api/table/{name}.csv{query}">CSV</a> · '
              f'<a href="/api/table/{name}.json{query}">JSON</a></div>')
    if not rows:
        return f'<p class="muted" id="table-{name}">nothing yet</p>{export}'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = ""
    for row in rows:
        cells = []
        for c in columns:
            text = _e(row.get(c))
            if links and c in links:
                text = f'<a href="{links[c](row)}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        body += f"<tr>{''.join(cells)}</tr>"
    return f'<table id="table-{name}"><tr>{head}</tr>{body}</table>{export}'


def svg_lines(series: dict[str, list[tuple[float, float]]], *, width=640, height=220, label="") -> str:
    """A small line chart: {name: [(x, y), ...]} as inline SVG."""
    points = [p for s in series.values() for p in s if p[1] is not None]
    if not points:
        return f'<svg width="{width}" height="40" role="img"><text x="4" y="24">{_e(label)}: no data yet</text></svg>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda x: 40 + (x - x0) / (x1 - x0) * (width - 60)  # noqa: E731
    sy = lambda y: height - 25 - (y - y0) / (y1 - y0) * (height - 45)  # noqa: E731
    colors = ["#2a6", "#c33", "#36c", "#a6a", "#c80"]
    out = [f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(label)}">',
           f'<text x="40" y="14" font-size="12">{_e(label)}</text>',
           f'<text x="2" y="{sy(y1) + 4:.0f}" font-size="10">{y1:.3g}</text>',
           f'<text x="2" y="{sy(y0):.0f}" font-size="10">{y0:.3g}</text>',
           f'<text x="40" y="{height - 8}" font-size="10">{x0:g}</text>',
           f'<text x="{width - 40}" y="{height - 8}" font-size="10">{x1:g}</text>']
    for i, (name, pts) in enumerate(series.items()):
        pts = [p for p in pts if p[1] is not None]
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colors[i % 5]}" stroke-width="2" points="{path}" '
                       f'data-series="{_e(name)}"/>')
            out.append(f'<text x="{width - 130}" y="{16 + 14 * i}" font-size="11" fill="{colors[i % 5]}">{_e(name)}</text>')
    return "".join(out) + "</svg>"


# ----------------------------------------------------------------------------- pages

def make_app(paths: Paths, config: Config, *, allowed_hosts: list[str]) -> Starlette:
    async def overview(request: Request):
        info = data.status(paths, config)
        last = info["last_cycle"] or {}
        schedule = info["schedule"]
        rows = [{"what": "current adapter", "value": info["adapter"] or "none (base model)"},
                {"what": "last cycle", "value": f"{last.get('cycle_id', 'none yet')} {last.get('outcome', '')}".strip()},
                {"what": "next scheduled run", "value": f"{schedule['next_run']} ({schedule['by']})" if schedule["by"]
                 else "not scheduled"},
                {"what": "sleeping now", "value": "yes" if info["sleep"] else "no"},
                {"what": "memories", "value": f"{info['memories']['turns']} turns"},
                {"what": "model", "value": f"{info['model']} on {info['backend']}"}]
        body = table(rows, name="overview") + "<h2>Queue</h2>" + table(data.queue_table(paths), name="queue")
        waiting = info["queue"]["waiting_files"]
        if waiting:
            body += f"<p>waiting in the inbox: {_e(', '.join(waiting))}</p>"
        return page("Overview", "/", body)

    async def live_page(request: Request):
        body = """<div class="panel" id="live-status">waiting for the first update…</div>
<div><button id="btn-pause" data-action="pause">Pause</button><button id="btn-resume" data-action="resume">Resume</button>
<button id="btn-stop" data-action="stop">Stop</button><button id="btn-skip" data-action="skip">Skip dataset</button>
<span id="ctl-result" class="muted"></span></div>
<div id="chart"></div>
<script>
const fmt = v => v === null || v === undefined ? "n/a" : (typeof v === "number" ? (Math.abs(v) < 1e4 ? v.toFixed(3) : v.toFixed(0)) : v);
function chart(curve) {
  const pts = curve.filter(e => e.train_loss !== null && e.train_loss !== undefined);
  const val = curve.filter(e => e.val_loss !== null && e.val_loss !== undefined);
  if (!pts.length) { document.getElementById("chart").innerHTML = "<p class='muted'>no training steps yet</p>"; return; }
  const all = pts.map(e => e.train_loss).concat(val.map(e => e.val_loss));
  const step = e => (e.global_step ?? e.iteration);
  const xs = pts.map(step).concat(val.map(step));
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...all), y1 = Math.max(...all, y0 + 1e-6);
  const sx = x => 40 + (x - x0) / (x1 - x0) * 580, sy = y => 200 - (y - y0) / (y1 - y0) * 180;
  const line = (rows, key, color, name) => `<polyline id="line-${name}" fill="none" stroke="${color}" stroke-width="2" points="${rows.map(e => sx(step(e)).toFixed(1) + "," + sy(e[key]).toFixed(1)).join(" ")}"/>`;
  document.getElementById("chart").innerHTML = `<svg width="640" height="220" id="loss-chart" data-points="${pts.length}">
    <text x="40" y="12" font-size="12">loss by step (green: train, red: validation)</text>
    <text x="2" y="24" font-size="10">${y1.toFixed(2)}</text><text x="2" y="200" font-size="10">${y0.toFixed(2)}</text>
    ${line(pts, "train_loss", "#2a6", "train")}${val.length ? line(val, "val_loss", "#c33", "val") : ""}</svg>`;
}
function show(d) {
  const s = d.status;
  const parts = [`cycle <b>${s.cycle_id ?? "none"}</b>`, `state <b id="live-state">${s.running ? s.state : (s.state ?? "idle") + " (not running)"}</b>`,
    `stage ${s.stage ?? "-"}`];
  if (s.step !== undefined) parts.push(`dataset ${s.dataset} (${s.dataset_index}/${s.datasets})`, `step <b id="live-step">${s.step}</b>/${s.total_steps}`,
    `loss ${fmt(s.train_loss)}`, `best val ${fmt(s.best_val_loss)}`, `early stop: ${s.evals_without_improvement ?? 0} evals without improvement`,
    `${fmt(s.tokens_per_second)} tokens/s`, `ETA ${s.eta_seconds === null || s.eta_seconds === undefined ? "n/a" : Math.round(s.eta_seconds) + " s"}`);
  if (s.flags && s.flags.length) parts.push(`requested: ${s.flags.join(", ")}`);
  document.getElementById("live-status").innerHTML = parts.join(" · ");
  chart(d.curve);
}
const source = new EventSource("/api/live/stream");
source.onmessage = e => show(JSON.parse(e.data));
document.querySelectorAll("button[data-action]").forEach(b => b.onclick = async () => {
  const r = await fetch("/api/ctl/" + b.dataset.action, {method: "POST", headers: {"X-Circadian": "1"}});
  const j = await r.json(); document.getElementById("ctl-result").textContent = j.done || j.error;
});
</script>"""
        return page("Live training", "/live", body)

    async def live_stream(request: Request):
        async def events():
            last = None
            while True:
                if await request.is_disconnected():
                    break
                payload = json.dumps(data.live(paths), default=str)
                if payload != last:
                    last = payload
                    yield f"data: {payload}\n\n"
                await asyncio.sleep(0.5)
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def ctl(request: Request):
        if request.headers.get("x-circadian") != "1":
            return JSONResponse({"error": "refused: not from the dashboard page"}, status_code=403)
        action = request.path_params["action"]
        if action not in control.ACTIONS:
            return JSONResponse({"error": f"unknown action {action}"}, status_code=400)
        if not control.read_status(paths.control)["running"] and action != "resume":
            return JSONResponse({"error": "no sleep is running"}, status_code=409)
        return JSONResponse({"done": control.request(paths.control, action)})

    def evolution_params(request: Request) -> dict:
        q = request.query_params
        return {"cycle": q.get("cycle", ""), "category": q.get("category", ""), "search": q.get("search", ""),
                "sort": q.get("sort", "learned_at")}

    async def evolution_page(request: Request):
        params = evolution_params(request)
        cycle, rows = data.evolution_examples(paths, params["cycle"] or None, category=params["category"],
                                              search=params["search"], sort=params["sort"])
        cycles = data.cycles_with_evolution(paths)
        options = "".join(f'<option {"selected" if c == cycle else ""}>{_e(c)}</option>' for c in cycles)
        cats = "".join(f'<option value="{c}" {"selected" if c == params["category"] else ""}>{c or "all"}</option>'
                       for c in ("", "learned", "struggling", "not learned"))
        sorts = "".join(f'<option value="{v}" {"selected" if v == params["sort"] else ""}>{n}</option>'
                        for v, n in (("learned_at", "learning speed"), ("final_loss", "final loss")))
        form = (f'<form id="filter"><label>night <select name="cycle">{options}</select></label> '
                f'<label>category <select name="category">{cats}</select></label> '
                f'<label>sort <select name="sort">{sorts}</select></label> '
                f'<label>search <input name="search" value="{_e(params["search"])}"></label> <button>show</button></form>')
        body = form + table(rows, name="evolution", params={**params, "cycle": cycle},
                            columns=["id", "category", "learned_at", "regressions", "question", "expected",
                                     "final_answer", "first_loss", "final_loss"],
                            links={"id": lambda r: f"/evolution/{cycle}/{r['id']}"})
        counts = {c: sum(1 for r in rows if r["category"] == c) for c in ("learned", "struggling", "not learned")}
        forgetting = data.forgetting(paths)
        body += f"<p id='evolution-counts'>{_e(json.dumps(counts))}</p><h2>Forgetting across nights</h2>"
        body += table([{"fact": f, **v} for f, v in forgetting["facts"].items()], name="forgetting")
        return page("Learning evolution", "/evolution", body)

    async def example_page(request: Request):
        cycle, example_id = request.path_params["cycle"], request.path_params["example"]
        example = data.evolution_example(paths, cycle, example_id)
        if example is None:
            return page("Not found", "/evolution", f"<p>no example {_e(example_id)} in {_e(cycle)}</p>")
        curve = example["curve"]
        numeric = [(c["step"] if isinstance(c["step"], int) else (curve[-2]["step"] + 1 if len(curve) > 1 else 1),
                    c["loss"]) for c in curve]
        body = (f"<p><b>question</b> {_e(example['question'])}<br><b>expected</b> {_e(example['expected'])}<br>"
                f"<b>category</b> <span id='category'>{_e(example['category'])}</span>, learned at step "
                f"{_e(example['learned_at'])}, {example['regressions']} regression(s)</p>"
                + svg_lines({"loss on the expected answer": numeric}, label="loss by snapshot")
                + table([{"step": c["step"], "hit": "✅" if c["hit"] else "❌", "loss": c["loss"], "answer": c["answer"]}
                         for c in curve], name=f"example__{cycle}__{example_id}"))
        return page(f"Example {example_id} · night {cycle}", "/evolution", body)

    async def cycles_page(request: Request):
        result = data.cycles_analysis(paths)
        body = "<h2>Cycles</h2>" + table(data.cycles_table(paths), name="cycles")
        body += "<h2>Per policy</h2>" + table(result["experiments"], name="experiments",
                                              columns=["experiment", "run_type", "seed", "cycles", "final_recall",
                                                       "perplexity_drift", "cumulative_oracle_regret",
                                                       "oracle_gain_share", "choices"])
        regret: dict[str, list] = {}
        for row in result["cycles"]:
            value = row["cumulative_oracle_regret"] if row["cumulative_oracle_regret"] is not None else row["cumulative_loss_regret"]
            regret.setdefault(row["experiment"], []).append((row["cycle"], value))
        body += svg_lines(regret, label="cumulative regret per experiment (oracle when known, else loss-level)")
        shares: dict[str, dict] = {}
        for run_type, cycles in result["choice_distribution"].items():
            for _cycle, counts in cycles.items():
                for source, n in counts.items():
                    shares.setdefault(run_type, {}).setdefault(source, 0)
                    shares[run_type][source] += n
        body += "<h2>Choice distribution</h2>" + table(
            [{"run_type": t, **counts} for t, counts in shares.items()], name="choices")
        integrity = result["integrity"]
        counts = integrity["counts"]
        body += ('<div class="panel" id="debug"><h2>Debug: integrity</h2>'
                 f"<p id='integrity-counts'>raw {_e(counts['raw'])} → parsed {_e(counts['parsed'])} → cleaned "
                 f"{_e(counts['cleaned'])} → joined {_e(counts['joined'])} → filtered {_e(counts['filtered'])} → "
                 f"displayed {_e(counts['displayed'])}</p>"
                 + table([{"log": k, **v} for k, v in integrity["logs"].items()], name="logs")
                 + "<h3>Broken lines</h3>" + table(integrity["broken_lines"], name="broken")
                 + "<h3>cycle_ids in one log only</h3>"
                 + table([{"where": k, "cycle_ids": ", ".join(v)} for k, v in integrity["missing_cycle_ids"].items()],
                         name="missing")
                 + "<h3>Experiments that never ended (left out of the per-policy means)</h3>"
                 + table(integrity["incomplete_experiments"], name="incomplete") + "</div>")
        return page("Cycles", "/cycles", body)

    async def adapters_page(request: Request):
        rows = data.adapter_rows(paths)
        body = table(rows, name="adapters")
        a, b = request.query_params.get("a"), request.query_params.get("b")
        versions = [r["version"] for r in rows]
        pick = lambda n, sel: "".join(f'<option {"selected" if v == sel else ""}>{_e(v)}</option>' for v in versions)  # noqa: E731
        body += (f'<h2>Compare</h2><form id="compare"><select name="a">{pick("a", a)}</select> '
                 f'<select name="b">{pick("b", b)}</select> <button>compare</button></form>')
        if a and b and a in versions and b in versions:
            body += table(data.compare(paths, a, b), name="compare", params={"a": a, "b": b})
        options = '<option value="base">base (no adapter)</option>' + pick("r", None)
        body += (f'<h2>Rollback</h2><form id="rollback" method="post" action="/api/rollback" '
                 f'onsubmit="return confirm(\'Make \' + this.version.value + \' the current adapter?\')">'
                 f'<select name="version">{options}</select> <button>roll back</button></form>')
        message = request.query_params.get("message")
        if message:
            body += f'<p id="message">{_e(message)}</p>'
        return page("Adapters", "/adapters", body)

    async def rollback(request: Request):
        origin = request.headers.get("origin") or request.headers.get("referer") or ""
        if urlparse(origin).hostname not in allowed_hosts:
            return PlainTextResponse("refused: not from the dashboard page", status_code=403)
        form = await request.form()
        target = str(form.get("version", ""))
        try:
            previous, new = adapters.use(paths, target) if target else adapters.rollback(paths)
            message = f"now current: {new or 'base'} (was {previous or 'base'})"
        except CircadianError as exc:
            message = str(exc)
        return Response(status_code=303, headers={"Location": "/adapters?" + urlencode({"message": message})})

    async def export(request: Request):
        name, fmt = request.path_params["name"], request.path_params["fmt"]
        q = request.query_params
        tables = {
            "overview": lambda: [{"key": k, "value": json.dumps(v, default=str)} for k, v in data.status(paths, config).items()],
            "queue": lambda: data.queue_table(paths),
            "evolution": lambda: data.evolution_examples(paths, q.get("cycle") or None, category=q.get("category", ""),
                                                         search=q.get("search", ""), sort=q.get("sort", "learned_at"))[1],
            "forgetting": lambda: [{"fact": f, **v} for f, v in data.forgetting(paths)["facts"].items()],
            "cycles": lambda: data.cycles_table(paths),
            "experiments": lambda: data.cycles_analysis(paths)["experiments"],
            "choices": lambda: data.cycles_analysis(paths)["cycles"],
            "logs": lambda: [{"log": k, **v} for k, v in data.cycles_analysis(paths)["integrity"]["logs"].items()],
            "broken": lambda: data.cycles_analysis(paths)["integrity"]["broken_lines"],
            "incomplete": lambda: data.cycles_analysis(paths)["integrity"]["incomplete_experiments"],
            "missing": lambda: [{"where": k, "cycle_ids": v} for k, v in
                                data.cycles_analysis(paths)["integrity"]["missing_cycle_ids"].items()],
            "adapters": lambda: data.adapter_rows(paths),
            "compare": lambda: data.compare(paths, q["a"], q["b"]),
        }
        if name.startswith("example__"):
            _, cycle, example_id = name.split("__", 2)
            found = data.evolution_example(paths, cycle, example_id) or {"curve": []}
            rows = found["curve"]
        elif name in tables:
            try:
                rows = tables[name]()
            except (CircadianError, KeyError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        else:
            return JSONResponse({"error": f"no table {name}"}, status_code=404)
        if fmt == "csv":
            return PlainTextResponse(data.to_csv(rows), media_type="text/csv",
                                     headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
        return JSONResponse(json.loads(json.dumps(rows, default=str)))

    routes = [Route("/", overview), Route("/live", live_page), Route("/api/live/stream", live_stream),
              Route("/api/ctl/{action}", ctl, methods=["POST"]), Route("/evolution", evolution_page),
              Route("/evolution/{cycle}/{example}", example_page), Route("/cycles", cycles_page),
              Route("/adapters", adapters_page), Route("/api/rollback", rollback, methods=["POST"]),
              Route("/api/table/{name}.{fmt:str}", export)]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)])


def serve(paths: Paths, config: Config, *, host: str, port: int, say) -> None:
    import uvicorn

    allowed = ["127.0.0.1", "localhost"] + ([host] if host not in ("127.0.0.1", "localhost") else [])
    app = make_app(paths, config, allowed_hosts=allowed)
    say(f"dashboard on http://{host}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
