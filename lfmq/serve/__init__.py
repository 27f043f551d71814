"""`lfmq serve`: an OpenAI-compatible HTTP server for one GGUF, for apps that talk to a local model.

    request.py   a chat-completions request checked field by field (RequestError -> HTTP 400)
    prepare.py   the prompt through the chat template, the grammar that forces a call or JSON, replies remembered
    worker.py    the thread that owns llama.cpp: several requests in one batch, state reused across turns
    reply.py     tokens -> OpenAI deltas (stop strings, reasoning, tool calls), streamed or joined
    app.py       the Starlette routes: /v1/chat/completions, /v1/models, /health; the API key

Nothing here is imported by `lfmq --help`; starlette and uvicorn load when a server starts."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lfmq.errors import UsageError

DEFAULT_PARALLEL = 4


def open_model(path: str | Path, *, profile: Any = None, n_ctx: int | None = None, threads: int | None = None,
               lora: Sequence[str | Path] | None = None, parallel: int = DEFAULT_PARALLEL) -> Any:
    """The model with a context of `parallel` sequences of n_ctx tokens each (default 4096, or the profile's)."""
    from lfmq.runtime.model import load

    if parallel < 1:
        raise UsageError(f"--parallel must be at least 1, not {parallel}")
    m = load(path, profile=profile, n_ctx=n_ctx, threads=threads, lora=lora)
    try:
        m.hold_sequences(parallel)
    except BaseException:
        m.close()
        raise
    return m


def _check_port(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port)") from None


def _uvicorn_server() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that Ctrl-C or SIGTERM end it as its normal way out (exit 0), not re-raised."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Server


def serve(model: Any, *, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          parallel: int = DEFAULT_PARALLEL, model_id: str | None = None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve an open model (from open_model) until interrupted; on_ready gets the base URL once it listens."""
    import uvicorn

    from lfmq.serve.app import create_app
    from lfmq.serve.worker import Worker

    _check_port(host, port)
    _Server = _uvicorn_server()
    worker = Worker(model, parallel)
    worker.start()
    app = create_app(model, worker, model_id=model_id or Path(model.path).stem, api_key=api_key)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    if on_ready is not None:
        started = server.startup

        async def announce(*args: Any, **kwargs: Any) -> None:
            await started(*args, **kwargs)
            if server.started:
                on_ready(f"http://{host}:{port}/v1")

        server.startup = announce  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        worker.stop()
