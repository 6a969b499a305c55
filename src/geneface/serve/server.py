"""Run the app with uvicorn on a socket bound first (so that port 0 picks a free port with no race), in the
foreground (`geneface serve`) or on a thread (`Background`, for tests and scripts)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import uvicorn

from ..device import keep_freed_memory
from ..errors import InputError
from .app import create_app
from .config import ServeConfig
from .live import MAX_CHUNK_BYTES

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), or a one-line `InputError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, config: ServeConfig) -> str:
    """The address to open: the bound port, the host as given (0.0.0.0 shown as this machine's name)."""
    port = sock.getsockname()[1]
    host = config.host
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={config.token}" if config.token else "")


def _uvicorn(config: ServeConfig) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(
        create_app(config), log_config=None, log_level="warning", access_log=False, proxy_headers=False,
        ws_per_message_deflate=False, ws_max_size=MAX_CHUNK_BYTES + 1024, timeout_graceful_shutdown=5,
        server_header=False))


def exposure_warning(config: ServeConfig) -> str | None:
    """The warning `serve` prints when ``config.host`` is not the loopback (None when it is)."""
    if config.loopback:
        return None
    return (f"--host {config.host}: other machines can reach this app"
            + (" (they need the token)" if config.token else " and use it without a token (--no-token)")
            + "; the page's microphone works only at http://localhost or over https")


def serve(config: ServeConfig) -> None:
    """Serve until Ctrl-C (`geneface serve`)."""
    sock = bind(config.host, config.port)
    keep_freed_memory()  # ~15 % less CPU per rendered frame (a long-running process can afford the memory)
    # Work on the app's worker threads gets little from torch's intra-op threads (measured: 1.1-1.2 cores of 2
    # for the renderer's small ops), so each live stream renders its frames on threads of its own
    # (StreamConfig.threads), which do best with one intra-op thread each; train and evaluate jobs run in
    # processes of their own and keep torch's default.
    torch.set_num_threads(1)
    warning = exposure_warning(config)
    if warning is not None:
        log.warning(warning)
    server = _uvicorn(config)
    log.info(f"geneface serve: {url_of(sock, config)} (Ctrl-C stops)")
    server.run(sockets=[sock])


class Background:
    """The app served by uvicorn on a thread of this process: ``url`` (a free port), then `stop`."""

    def __init__(self, config: ServeConfig) -> None:
        self.sock = bind(config.host, config.port)
        self.url = url_of(self.sock, config)
        self.server = _uvicorn(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="geneface-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextmanager
def background(config: ServeConfig) -> Iterator[Background]:
    """`Background` as a context manager."""
    server = Background(config)
    try:
        yield server
    finally:
        server.stop()
