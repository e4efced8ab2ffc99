"""The `dashboard` command: the local web page over the home."""

from __future__ import annotations

from typing import Annotated

import typer

from circadian.cli._common import HomeOpt, say, setup


def dashboard(
    home: HomeOpt = None,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="default 127.0.0.1; anything else exposes your conversations to that network")
    ] = "127.0.0.1",
):
    """Open the local web dashboard.

    Overview, live training with pause / stop / skip, learning evolution, cycles, adapters; on
    127.0.0.1 only unless --host says otherwise.
    """
    from circadian.web.app import serve

    paths, config = setup(home)
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"warning: serving on {host}, not only this machine; anyone who can reach it reads your conversations")
    serve(paths, config, host=host, port=port, say=say)
