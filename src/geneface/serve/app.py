"""The web app: the page (Speak, Live, Train, Evaluate) and the HTTP/WebSocket API under it.

Every route answers JSON; an error is ``{"error": "one line"}`` with status 400 (a bad request or file), 401
(no token), 403 (a request from another site), 404, 409 (busy), 413 (too large) or, for a bug, 500 with no
traceback (that goes to the server's log). README "geneface serve" lists the routes.

Safety: with a token, a request must carry it (``Authorization: Bearer T``, ``?token=T``, or the cookie the
page gets when it is opened with ``?token=T``); on the loopback, requests must name a loopback host (no DNS
rebinding), and a browser request from another site's page (its ``Origin``) is refused, WebSockets included.
The page may load nothing from elsewhere (its Content-Security-Policy says so).
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import shutil
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..device import DEVICES, resolve_device
from ..features import FEATURE_KINDS
from ..motion.presets import PRESETS
from ..errors import GeneFaceError, InputError
from ..fileio import read_json
from ..infer.cli_demo import bundled_speech
from .config import LOOPBACK_NAMES, ServeConfig
from .jobs import Busy, Jobs
from .live import Live
from .store import MB, Models, NotFound, TooLarge, Work

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024
"""Largest JSON request body."""
COOKIE = "geneface_token"
STATIC = resources.files("geneface.serve") / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
       "connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
"""The page loads only what the app serves (and blobs it makes itself)."""
STATUS = {NotFound: 404, TooLarge: 413, Busy: 409}


def create_app(config: ServeConfig) -> Starlette:
    """The app for ``config`` (its work folder is made; jobs left running by a previous server are marked
    interrupted). `geneface.serve.server.serve` runs it with uvicorn."""
    work = Work(config.work, config.people)
    device = str(resolve_device(config.device))
    models = Models(device)
    jobs = Jobs(work, models, device, config.max_speech_seconds)
    live = Live(work, models, config.max_live, config.live_workers)
    api = _Api(config, work, jobs, live)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            yield
        finally:
            await run_in_threadpool(jobs.close)
            live.close()

    routes = [
        Route("/", api.index),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
        Route("/api", api.routes),
        Route("/api/info", api.info),
        Route("/api/people", api.people),
        Route("/api/example-speech", api.example_speech),
        Route("/api/uploads", api.upload, methods=["POST"]),
        Route("/api/speak", api.speak, methods=["POST"]),
        Route("/api/train", api.train, methods=["POST"]),
        Route("/api/evaluate", api.evaluate, methods=["POST"]),
        Route("/api/jobs", api.list_jobs),
        Route("/api/jobs/{job}", api.job),
        Route("/api/jobs/{job}/cancel", api.cancel, methods=["POST"]),
        Route("/api/jobs/{job}/resume", api.resume, methods=["POST"]),
        Route("/api/jobs/{job}/video", api.video),
        Route("/api/jobs/{job}/report", api.report),
        Route("/api/jobs/{job}/files/{name}", api.file),
        WebSocketRoute("/api/live", live.serve),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: _internal_error,
                                                                          404: _not_found, 405: _bad_method})
    app.state.config, app.state.work, app.state.jobs, app.state.live = config, work, jobs, live
    return _Guard(app, config)


ROUTES = [
    ("GET", "/", "the page"),
    ("GET", "/api", "this list"),
    ("GET", "/api/info", "version, limits, whether text can be spoken (espeak-ng), live sessions"),
    ("GET", "/api/people", "the person models: [{id, size, fps, features, bundled, evaluable, problem?}]"),
    ("GET", "/api/example-speech", "the bundled speech (FLAC)"),
    ("POST", "/api/uploads?kind=audio|video&name=FILE", "a file as the raw body or a multipart form -> {id, ...}"),
    ("POST", "/api/speak", "{person, audio: UPLOAD | text | example: true, controls} -> a render job"),
    ("POST", "/api/train", "{name, video: UPLOAD | path, settings} -> a train job (one at a time)"),
    ("POST", "/api/evaluate", "{person, frames?, audio?: [UPLOAD]} -> an evaluate job"),
    ("GET", "/api/jobs", "every job, newest first"),
    ("GET", "/api/jobs/ID", "a job: state, progress, detail, eta, stages, error, result"),
    ("POST", "/api/jobs/ID/cancel", "cancel a job (training keeps its checkpoint)"),
    ("POST", "/api/jobs/ID/resume", "run a failed, cancelled or interrupted job again (training resumes)"),
    ("GET", "/api/jobs/ID/video", "a render job's mp4 (?download=1 to save it)"),
    ("GET", "/api/jobs/ID/report", "an evaluate job's report.json"),
    ("GET", "/api/jobs/ID/files/NAME", "an evaluate job's report.md and plots"),
    ("WS", "/api/live", "live: audio in, frames out (see README)"),
]


class _Api:
    """The route handlers."""

    def __init__(self, config: ServeConfig, work: Work, jobs: Jobs, live: Live) -> None:
        self.config, self.work, self.jobs, self.live = config, work, jobs, live

    async def index(self, request: Request) -> Response:
        response = HTMLResponse((STATIC / "index.html").read_text(), headers=_page_headers())
        token = request.query_params.get("token")
        if self.config.token is not None and token is not None:  # _Guard checked it
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def routes(self, request: Request) -> Response:
        return JSONResponse({"routes": [{"method": m, "path": p, "what": w} for m, p, w in ROUTES]})

    async def info(self, request: Request) -> Response:
        return JSONResponse({
            "version": __version__, "espeak": shutil.which("espeak-ng") is not None, "device": self.jobs.device,
            "people_folder": str(self.work.people),
            "limits": {"audio_mb": self.config.max_audio_mb, "video_mb": self.config.max_video_mb,
                       "speech_seconds": self.config.max_speech_seconds, "live_sessions": self.config.max_live},
            "live": {"active": self.live.active},
            "train": {"features": [k for k in FEATURE_KINDS if k != "hubert"], "motion_presets": list(PRESETS),
                      "devices": list(DEVICES)}})

    async def people(self, request: Request) -> Response:
        people = await run_in_threadpool(self.work.list_people)
        for person in people:
            person.pop("path")
        return JSONResponse({"people": people})

    async def example_speech(self, request: Request) -> Response:
        return FileResponse(bundled_speech(), media_type="audio/flac")

    async def upload(self, request: Request) -> Response:
        return await _handle(self._upload, request)

    async def _upload(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "audio")
        if kind not in ("audio", "video"):
            raise InputError(f"kind must be audio or video, got {kind[:20]!r}")
        name = request.query_params.get("name") or request.headers.get("x-filename") or "upload"
        mb = self.config.max_audio_mb if kind == "audio" else self.config.max_video_mb
        hint = "--max-audio-mb" if kind == "audio" else "--max-video-mb"
        limit = mb * MB
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MAX_JSON_BYTES:
            raise TooLarge(f"the {kind} upload is larger than the {mb} MB limit ({hint})")
        path, name = await self.work.receive(request.stream(), request.headers.get("content-type", ""), kind, name,
                                       limit, hint)
        try:
            upload = await run_in_threadpool(self.work.record, path, kind, name)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        record = asdict(upload)
        record.pop("file")
        return JSONResponse(record, status_code=201)

    async def speak(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            body = await _json_body(request)
            _only(body, ("person", "audio", "text", "example", "controls"))
            if not isinstance(body.get("example", False), bool):
                raise InputError("example must be true or false")
            job = await run_in_threadpool(self.jobs.render, body.get("person", "demo"), body.get("controls", {}),
                                          body.get("audio"), body.get("text"), body.get("example", False))
            return JSONResponse(job.public(), status_code=202)
        return await _handle(go, request)

    async def train(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            body = await _json_body(request)
            _only(body, ("name", "video", "path", "settings"))
            job = await run_in_threadpool(self.jobs.train, body.get("name"), body.get("settings", {}),
                                          body.get("video"), body.get("path"))
            return JSONResponse(job.public(), status_code=202)
        return await _handle(go, request)

    async def evaluate(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            body = await _json_body(request)
            _only(body, ("person", "frames", "audio"))
            audio = body.get("audio", [])
            if not isinstance(audio, list):
                raise InputError("audio must be a list of upload ids")
            job = await run_in_threadpool(self.jobs.evaluate, body.get("person"), body.get("frames"), audio)
            return JSONResponse(job.public(), status_code=202)
        return await _handle(go, request)

    async def list_jobs(self, request: Request) -> Response:
        return JSONResponse({"jobs": [job.public() for job in self.jobs.list()]})

    async def job(self, request: Request) -> Response:
        return await _handle(lambda r: _ok(self.jobs.get(r.path_params["job"]).public()), request)

    async def cancel(self, request: Request) -> Response:
        return await _handle(lambda r: _ok(self.jobs.cancel(r.path_params["job"]).public()), request)

    async def resume(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            job = await run_in_threadpool(self.jobs.resume, request.path_params["job"])
            return JSONResponse(job.public(), status_code=202)
        return await _handle(go, request)

    async def video(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            job = self.jobs.get(request.path_params["job"])
            path = self.work.job_dir(job.id) / "video.mp4"
            if job.kind != "render" or job.state != "done" or not path.is_file():
                raise NotFound(f"job {job.id} has no video (it is {job.state})")
            person = job.params.get("person", "person")
            download = request.query_params.get("download") not in (None, "", "0")
            return FileResponse(path, media_type="video/mp4", filename=f"{person}-{job.id}.mp4",
                                content_disposition_type="attachment" if download else "inline")
        return await _handle(go, request)

    async def report(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            job = self.jobs.get(request.path_params["job"])
            path = self.work.job_dir(job.id) / "eval" / "report.json"
            if job.kind != "evaluate" or job.state != "done" or not path.is_file():
                raise NotFound(f"job {job.id} has no report (it is {job.state})")
            return JSONResponse(await run_in_threadpool(read_json, path))
        return await _handle(go, request)

    async def file(self, request: Request) -> Response:
        async def go(request: Request) -> Response:
            job = self.jobs.get(request.path_params["job"])
            name = request.path_params["name"]
            if job.kind != "evaluate" or name not in job.result.get("files", []):
                raise NotFound(f"job {job.id} has no file {name[:60]!r}")
            path = self.work.job_dir(job.id) / "eval" / Path(name).name
            media = {".png": "image/png", ".md": "text/markdown; charset=utf-8", ".json": "application/json"}
            return FileResponse(path, media_type=media.get(path.suffix, "application/octet-stream"))
        return await _handle(go, request)


def _ok(data: Any) -> Response:
    return JSONResponse(data)


async def _handle(fn: Callable[[Request], Any], request: Request) -> Response:
    """Run a handler; a `GeneFaceError` becomes ``{"error": message}`` with its status."""
    try:
        result = fn(request)
        if inspect.isawaitable(result):
            result = await result
        return result
    except GeneFaceError as e:
        return _error(STATUS.get(type(e), 400), str(e))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict:
    """The request's JSON object (at most `MAX_JSON_BYTES`)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            raise TooLarge(f"the request is larger than {MAX_JSON_BYTES // 1024} KB")
    try:
        body = json.loads(bytes(data) or b"{}")
    except ValueError:
        raise InputError("the request body must be JSON") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    return body


def _only(body: dict, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise InputError(f"unknown field {unknown[0][:40]!r}; expected {', '.join(keys)}")


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error(f"{request.method} {request.url.path} failed", exc_info=exc)
    return _error(500, "internal error; the server's log has the details")


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no such page or route: {request.url.path[:100]}")


async def _bad_method(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path[:100]}")


class _Guard:
    """Checks every request before the app sees it: the token, the Host (loopback), the Origin; and adds the
    page's security headers to static files."""

    def __init__(self, app: Starlette, config: ServeConfig) -> None:
        self.app = app
        self.state = app.state
        self.config = config

    @property
    def routes(self):
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        problem = self._problem(conn)
        if problem is not None:
            status, message = problem
            log.warning(f"refused {scope.get('method', 'WebSocket')} {conn.url.path}: {message}")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            else:
                await _error(status, message)(scope, receive, send)
            return
        if scope["type"] == "http" and conn.url.path.startswith("/static/"):
            send = _with_headers(send, {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        await self.app(scope, receive, send)

    def _problem(self, conn: HTTPConnection) -> tuple[int, str] | None:
        host = (conn.headers.get("host") or "").lower()
        hostname = urlsplit(f"//{host}").hostname or ""
        if self.config.loopback and hostname not in LOOPBACK_NAMES:
            return 403, f"this server answers requests for localhost only (Host: {host[:60]})"
        origin = conn.headers.get("origin")
        if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host:
            method = conn.scope.get("method", "GET")
            if conn.scope["type"] == "websocket" or method not in ("GET", "HEAD"):
                return 403, "a request from another site's page is refused"
        if self.config.token is not None:
            given = [conn.query_params.get("token"), conn.cookies.get(COOKIE)]
            auth = conn.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given.append(auth[7:].strip())
            if not any(g is not None and hmac.compare_digest(g.encode(), self.config.token.encode()) for g in given):
                return 401, ("this server needs its token: open the address it printed (.../?token=...) or send "
                             "the header Authorization: Bearer TOKEN")
        return None


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = list(message.get("headers", [])) + [
                (k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send(message)
    return wrapped
