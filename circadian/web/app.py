"""`circadian dashboard`: a local web page over the home (starlette + uvicorn), bound to 127.0.0.1.

Pages: overview, live training (server-sent events from `control/status.json` and the cycle's
metrics; pause / stop / skip buttons write the same control files as `circadian ctl`), the
learning-evolution browser, cycles (choices, regret, the integrity debug panel) and adapters
(manifests, comparison, making a version current with a confirmation). The pages are Jinja2 templates
(`web/templates/`, autoescaped) over the rows of `web/views.py`; charts are the report's matplotlib
charts, except the live one, drawn in `static/live.js` as the events arrive. Every table links to its
CSV and JSON. Who may come in is `web/doors.py`: the Host must be an address it serves, any host but
loopback needs the token, and state-changing requests must be POSTs from the page itself (scheme,
host and port).
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.figures import figure
from circadian.core.paths import Paths
from circadian.core.tables import to_csv
from circadian.night import charts, control
from circadian.store import adapters
from circadian.web import views
from circadian.web.doors import LOOPBACK, Doors, load_token, same_origin

NAV = [
    ("/", "Overview"),
    ("/live", "Live training"),
    ("/knowledge", "What it learned"),
    ("/evolution", "Evolution"),
    ("/cycles", "Cycles"),
    ("/adapters", "Adapters"),
    ("/memory", "Memory"),
]


def _cell(value) -> str:
    """How a table cell shows a value: floats to 4 significant digits, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=str(resources.files("circadian.web") / "templates"))
    found.env.filters["cell"] = _cell
    found.env.filters["columns"] = lambda rows: list(dict.fromkeys(k for row in rows for k in row))
    found.env.filters["pct"] = lambda v: figure(v, ".0%")
    return found


def _query(params: dict) -> str:
    kept = {k: v for k, v in params.items() if v}
    return "?" + urlencode(kept) if kept else ""


def make_app(paths: Paths, config: Config, *, hosts: list[str], port: int, token: str | None = None) -> Starlette:
    """The dashboard for `paths`, answering on `hosts` at `port`; every request needs `token` if given."""
    pages = templates()

    def from_the_page(request: Request) -> bool:
        origin = request.headers.get("origin") or request.headers.get("referer") or ""
        return same_origin(origin, hosts, port)

    def page(request: Request, name: str, title: str, active: str, **context) -> Response:
        return pages.TemplateResponse(request, name, {"title": title, "active": active, "nav": NAV, **context})

    async def overview(request: Request):
        info = views.status(paths, config)
        last, schedule = info["last_cycle"] or {}, info["schedule"]
        cards = [
            {"what": "current adapter", "value": info["adapter"] or "none (base model)"},
            {"what": "last cycle", "value": f"{last.get('cycle_id', 'none yet')} {last.get('outcome', '')}".strip()},
            {
                "what": "next scheduled run",
                "value": f"{schedule['next_run']} ({schedule['by']})" if schedule["by"] else "not scheduled",
            },
            {"what": "sleeping now", "value": "yes" if info["sleep"] else "no"},
            {"what": "memories", "value": f"{info['memories']['turns']} turns"},
            {"what": "model", "value": f"{info['model']} on {info['backend']}"},
        ]
        return page(
            request,
            "overview.html",
            "Overview",
            "/",
            cards=cards,
            queue=views.queue_table(paths),
            waiting=info["queue"]["waiting_files"],
        )

    async def knowledge_page(request: Request):
        found = views.knowledge(paths, request.query_params.get("cycle") or None)
        return page(
            request, "knowledge.html", "What it learned", "/knowledge", found=found, rows=views.coverage_rows(found)
        )

    async def live_page(request: Request):
        return page(request, "live.html", "Live training", "/live")

    async def live_stream(request: Request):
        async def events():
            last = None
            while not await request.is_disconnected():
                payload = json.dumps(views.live(paths), default=str)
                if payload != last:
                    last = payload
                    yield f"data: {payload}\n\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def ctl(request: Request):
        if request.headers.get("x-circadian") != "1" or not from_the_page(request):
            return JSONResponse({"error": "refused: not from the dashboard page"}, status_code=403)
        action = request.path_params["action"]
        if action not in control.ACTIONS:
            return JSONResponse({"error": f"unknown action {action}"}, status_code=400)
        if not control.read_status(paths.control).running and action != "resume":
            return JSONResponse({"error": "no sleep is running"}, status_code=409)
        return JSONResponse({"done": control.request(paths.control, action)})

    def evolution_params(request: Request) -> dict:
        q = request.query_params
        return {
            "cycle": q.get("cycle", ""),
            "category": q.get("category", ""),
            "search": q.get("search", ""),
            "sort": q.get("sort", "learned_at"),
        }

    async def evolution_page(request: Request):
        params = evolution_params(request)
        cycle, rows = views.evolution_examples(
            paths, params["cycle"] or None, category=params["category"], search=params["search"], sort=params["sort"]
        )
        _cycle, every = views.evolution_examples(paths, cycle, search=params["search"])  # the chips count all of them
        chip_query = lambda category: urlencode({**params, "cycle": cycle or "", "category": category})  # noqa: E731
        forgetting = [{"fact": f, **v} for f, v in views.forgetting(paths)["facts"].items()]
        return page(
            request,
            "evolution.html",
            "Learning evolution",
            "/evolution",
            params=params,
            cycle=cycle,
            cycles=views.cycles_with_evolution(paths),
            rows=rows,
            share=views.learned_share(every),
            categories=views.CATEGORIES,
            chip_query=chip_query,
            query=_query({**params, "cycle": cycle}),
            forgetting=forgetting,
        )

    async def example_page(request: Request):
        cycle, example_id = request.path_params["cycle"], request.path_params["example"]
        example = views.evolution_example(paths, cycle, example_id)
        chart = ""
        if example is not None:
            curve = example["curve"]
            last_step = max([c["step"] for c in curve if isinstance(c["step"], int)], default=0)
            points = [(c["step"] if isinstance(c["step"], int) else last_step + 1, c["loss"]) for c in curve]
            chart = charts.line_chart(
                {"loss on the expected answer": points},
                xlabel="snapshot (step; last: final)",
                ylabel="loss",
                size=(5.5, 3.0),
                points=True,
            )
        title = f"Example {example_id} · night {cycle}" if example else "Not found"
        return page(
            request,
            "example.html",
            title,
            "/evolution",
            example=example,
            example_id=example_id,
            cycle=cycle,
            chart=chart,
        )

    async def cycles_page(request: Request):
        result = views.cycles_analysis(paths)
        integrity = result["integrity"]
        regret = views.regret_series(result)
        return page(
            request,
            "cycles.html",
            "Cycles",
            "/cycles",
            result=result,
            cycles=views.cycles_table(paths),
            choices=views.choice_shares(result),
            regret_chart=charts.line_chart(regret, xlabel="cycle", ylabel="cumulative regret", points=True),
            logs=[{"log": k, **v} for k, v in integrity["logs"].items()],
            missing=[{"where": k, "cycle_ids": ", ".join(v)} for k, v in integrity["missing_cycle_ids"].items()],
        )

    async def memory_page(request: Request):
        rows = views.ledger_rows(paths, config)
        return page(
            request,
            "memory.html",
            "Memory",
            "/memory",
            rows=rows,
            graduated=sum(r["graduated"] for r in rows),
            within=config.sleep.graduate_within,
            adapter=adapters.current_version(paths),
        )

    async def adapters_page(request: Request):
        rows = views.adapter_rows(paths)
        versions = [r["version"] for r in rows]
        a, b = request.query_params.get("a"), request.query_params.get("b")
        comparison = views.compare(paths, a, b) if a in versions and b in versions else None
        return page(
            request,
            "adapters.html",
            "Adapters",
            "/adapters",
            rows=rows,
            versions=versions,
            a=a,
            b=b,
            comparison=comparison,
            message=request.query_params.get("message"),
        )

    async def use_version(request: Request):
        if not from_the_page(request):
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
        analysis = lambda: views.cycles_analysis(paths)  # noqa: E731
        tables = {
            "overview": lambda: [
                {"key": k, "value": json.dumps(v, default=str)} for k, v in views.status(paths, config).items()
            ],
            "queue": lambda: views.queue_table(paths),
            "ledger": lambda: views.ledger_rows(paths, config),
            "coverage": lambda: views.coverage_rows(views.knowledge(paths, q.get("cycle") or None)),
            "evolution": lambda: views.evolution_examples(
                paths,
                q.get("cycle") or None,
                category=q.get("category", ""),
                search=q.get("search", ""),
                sort=q.get("sort", "learned_at"),
            )[1],
            "forgetting": lambda: [{"fact": f, **v} for f, v in views.forgetting(paths)["facts"].items()],
            "cycles": lambda: views.cycles_table(paths),
            "experiments": lambda: analysis()["experiments"],
            "choices": lambda: views.choice_shares(analysis()),
            "logs": lambda: [{"log": k, **v} for k, v in analysis()["integrity"]["logs"].items()],
            "broken": lambda: analysis()["integrity"]["broken_lines"],
            "incomplete": lambda: analysis()["integrity"]["incomplete_experiments"],
            "missing": lambda: [
                {"where": k, "cycle_ids": v} for k, v in analysis()["integrity"]["missing_cycle_ids"].items()
            ],
            "adapters": lambda: views.adapter_rows(paths),
            "compare": lambda: views.compare(paths, q["a"], q["b"]),
        }
        if name.startswith("example__"):
            _, cycle, example_id = name.split("__", 2)
            rows = (views.evolution_example(paths, cycle, example_id) or {"curve": []})["curve"]
        elif name in tables:
            try:
                rows = tables[name]()
            except (CircadianError, KeyError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        else:
            return JSONResponse({"error": f"no table {name}"}, status_code=404)
        if fmt == "csv":
            return PlainTextResponse(
                to_csv(rows),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
            )
        return JSONResponse(json.loads(json.dumps(rows, default=str)))

    static = StaticFiles(directory=str(resources.files("circadian.web") / "static"))
    routes = [
        Route("/", overview),
        Route("/live", live_page),
        Route("/knowledge", knowledge_page),
        Route("/api/live/stream", live_stream),
        Route("/api/ctl/{action}", ctl, methods=["POST"]),
        Route("/evolution", evolution_page),
        Route("/evolution/{cycle}/{example}", example_page),
        Route("/cycles", cycles_page),
        Route("/adapters", adapters_page),
        Route("/memory", memory_page),
        Route("/api/rollback", use_version, methods=["POST"]),
        Route("/api/table/{name}.{fmt:str}", export),
        Mount("/static", app=static, name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Doors, hosts=hosts, token=token)])


def serve(paths: Paths, config: Config, *, host: str, port: int, say) -> None:
    """Serve the dashboard on host:port until Ctrl-C; any host but loopback needs the token."""
    import uvicorn

    host = host.lower()  # URL host names compare in lower case
    hosts = list(LOOPBACK) + ([host] if host not in LOOPBACK else [])
    token = None
    shown = f"[{host}]" if ":" in host else host
    if host not in LOOPBACK:
        token_file = paths.control / "dashboard.token"
        token, new = load_token(token_file)
        say(
            f"dashboard token {'generated' if new else 'kept'} in {token_file}; open "
            + (f"http://{shown}:{port}/?token={token}" if new else f"http://{shown}:{port}/?token=<the token>")
        )
    app = make_app(paths, config, hosts=hosts, port=port, token=token)
    say(f"dashboard on http://{shown}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
