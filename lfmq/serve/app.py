"""The HTTP side of `lfmq serve`: a Starlette app with OpenAI's /v1/chat/completions (whole or streamed as server-sent
events), /v1/models and /health. Every refused request is OpenAI's error JSON ({"error": {"message", "type", "param",
"code"}}) with status 400 (401 without the API key); a client that goes away cancels its generation."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import deque
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lfmq.errors import RequestError
from lfmq.runtime.generate import resolve_sampling
from lfmq.serve.prepare import Prepared, ReplyMemory, prepare
from lfmq.serve.reply import ReplyStream, join
from lfmq.serve.request import ChatRequest, parse_request
from lfmq.serve.worker import Job, Usage, Worker

DISCONNECT_POLL = 0.25  # seconds between checks that a client waiting for a whole answer is still there
WHOLE_BATCH = 64        # tokens handed over at once to a request that waits for its whole answer


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Inbox:
    """Events from the worker thread to one request's coroutine. The event loop is woken once for whatever arrived
    while it was busy, not once per token: fewer hand-offs of the GIL between the worker and the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every: int = 1) -> None:
        self._loop, self._items, self._scheduled = loop, deque(), False
        self._every = every  # wake the loop for every `every` tokens (the end and errors wake it at once)
        self._ready = asyncio.Event()

    def emit(self, event: tuple) -> None:
        """Called from the worker thread (or the loop); never blocks."""
        self._items.append(event)
        if event[0] == "token" and len(self._items) < self._every:
            return
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the server is shutting down
                pass

    def _wake(self) -> None:
        self._scheduled = False
        self._ready.set()

    async def take(self) -> list[tuple]:
        """Every event that has arrived, waiting for at least one."""
        while not self._items:
            self._ready.clear()
            if self._items:
                break
            await self._ready.wait()
        out = []
        while self._items:
            out.append(self._items.popleft())
        return out


class _ApiKey:
    """ASGI middleware: every route but /health needs `Authorization: Bearer KEY`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            header = dict(scope.get("headers") or ()).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                body = error_body("a valid API key is needed: send `Authorization: Bearer KEY`", "authentication_error",
                                  code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Server:
    """The routes, over one model and its worker."""

    def __init__(self, model: Any, worker: Worker, model_id: str) -> None:
        self.model, self.worker, self.model_id = model, worker, model_id
        self.memory = ReplyMemory()
        self.created = int(time.time())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id, **self.worker.status()})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model",
                                                         "created": self.created, "owned_by": "lfmq"}]})

    async def chat_completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise RequestError("the request body is not JSON") from None
        req = parse_request(body)
        prep = prepare(self.model, req, self.worker.n_ctx_seq, self.memory)
        # a whole answer without stop strings needs its tokens only at the end: no wake-up per token
        inbox = Inbox(asyncio.get_running_loop(), 1 if req.stream or req.stop else WHOLE_BATCH)
        job = Job(prep.text, prep.tokens, resolve_sampling(None, **req.sampling), inbox.emit, prep.grammar,
                  prep.ban + (self.model.eog_tokens() if req.ignore_eos else ()), req.max_tokens)
        self.worker.submit(job)
        rid, created = f"chatcmpl-{id(job):x}{int(time.time() * 1000):x}", int(time.time())
        head = {"id": rid, "created": created, "model": self.model_id}
        if req.stream:
            return StreamingResponse(self._sse(job, inbox, req, prep, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await self._whole(request, job, inbox, req, prep, head)

    def _handle(self, event: tuple, job: Job, stream: ReplyStream) -> tuple[list[dict[str, Any]], Any]:
        """One event of the worker: (deltas, None) while tokens come, then (deltas, (finish_reason, Usage)); an
        error raises RequestError."""
        if event[0] == "token":
            if stream.stopped:
                return [], None
            deltas = stream.feed(event[2])
            if stream.stopped:
                job.cancel()
            return deltas, None
        if event[0] == "end":
            _, reason, usage = event
            deltas = stream.finish()
            finish = "stop" if stream.stopped or reason == "cancelled" else reason
            if stream.call_ids:
                finish = "tool_calls"
            self.memory.remember(stream.raw, join(deltas)["content"], stream.call_ids)
            return deltas, (finish, usage)
        _, message, status = event
        raise RequestError(message, code="server_error" if status >= 500 else None)

    @staticmethod
    def _usage(usage: Usage) -> dict[str, Any]:
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}

    def _schema_error(self, prep: Prepared, message: dict[str, Any], finish: str, req: ChatRequest) -> str | None:
        from lfmq.runtime.extract import _check as check_output  # the validation extraction does

        if prep.schema is None:
            return None
        return check_output(message.get("content") or "", prep.schema, finish, req.max_tokens)[1]

    async def _whole(self, request: Request, job: Job, inbox: Inbox, req: ChatRequest, prep: Prepared,
                     head: dict[str, Any]) -> Response:
        stream = ReplyStream(prep.tools, req.stop, prep.in_reasoning)
        deltas: list[dict[str, Any]] = []

        async def watch() -> None:  # a client that gives up on the answer: nobody to answer, stop generating
            while not await request.is_disconnected():
                await asyncio.sleep(DISCONNECT_POLL)
            inbox.emit(("gone",))

        watcher = asyncio.ensure_future(watch())
        end = None
        try:
            while end is None:
                for event in await inbox.take():
                    if event[0] == "gone":
                        return Response(status_code=499)
                    part, end = self._handle(event, job, stream)
                    deltas += part
                    if end is not None:
                        break
        finally:
            watcher.cancel()
            job.cancel()
        finish, usage = end
        message = join(deltas)
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        problem = self._schema_error(prep, message, finish, req)
        if problem:
            choice["schema_error"] = problem  # decoding was constrained, and the output still breaks the schema
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": self._usage(usage)})

    async def _sse(self, job: Job, inbox: Inbox, req: ChatRequest, prep: Prepared,
                   head: dict[str, Any]) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            body = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        stream = ReplyStream(prep.tools, req.stop, prep.in_reasoning)
        try:
            yield chunk({"role": "assistant", "content": ""})
            end = None
            while end is None:
                out = []
                for event in await inbox.take():
                    deltas, end = self._handle(event, job, stream)
                    out += [chunk(delta) for delta in deltas]
                    if end is not None:
                        break
                if out:
                    yield "".join(out)  # what came in one wake-up goes out in one write
            finish, usage = end
            yield chunk({}, finish)
            if req.include_usage:
                yield chunk(None, usage=self._usage(usage))
            yield "data: [DONE]\n\n"
        except RequestError as e:
            yield f"data: {json.dumps(error_body(str(e), 'server_error'))}\n\n"
        finally:
            job.cancel()  # the client went away (or the answer is whole): the slot is freed at the next step


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    status = 500 if exc.code == "server_error" else 400
    kind = "server_error" if status == 500 else "invalid_request_error"
    return JSONResponse(error_body(str(exc), kind, exc.param, exc.code if status == 400 else None), status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)


def create_app(model: Any, worker: Worker, *, model_id: str, api_key: str | None = None) -> Any:
    """The ASGI app (uvicorn runs it); api_key makes every route but /health need a bearer token."""
    s = Server(model, worker, model_id)
    app = Starlette(routes=[Route("/health", s.health), Route("/v1/models", s.models),
                            Route("/v1/chat/completions", s.chat_completions, methods=["POST"])],
                    exception_handlers={RequestError: _request_error, HTTPException: _http_error})
    return _ApiKey(app, api_key) if api_key else app
