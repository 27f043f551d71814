"""`lfmq serve`: an OpenAI-compatible HTTP server for one model (the work is lfmq/serve/)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lfmq.cli.app import app
from lfmq.cli.options import GGUFPath, Lora, NCtx, Profile, Threads


@app.command()
def serve(
    model: GGUFPath,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (another than loopback exposes the model "
                                                     "to the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LFMQ_API_KEY",
                                                   help="Require `Authorization: Bearer KEY` (or set LFMQ_API_KEY).",
                                                   show_default=False)] = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Requests decoded together in one batch; more "
                                                                     "wait in line.")] = 4,
    profile: Profile = None,
    n_ctx: NCtx = None,
    threads: Threads = None,
    lora: Lora = None,
) -> None:
    """Serve a model over OpenAI's chat-completions API (/v1/chat/completions, /v1/models, /health)."""
    from lfmq import ui
    from lfmq.serve import open_model, serve as run

    m = open_model(model, profile=profile, n_ctx=n_ctx, threads=threads, lora=lora, parallel=parallel)
    try:
        ui.show_model(m)
        per_request = m.n_ctx
        run(m, host=host, port=port, api_key=api_key, parallel=parallel,
            on_ready=lambda url: ui.err.print(f"serving {m.path.name} at {url} ({parallel} at a time, {per_request} tokens "
                                         f"each{', API key required' if api_key else ''}); Ctrl-C stops", markup=False))
    finally:
        m.close()
