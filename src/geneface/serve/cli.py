"""Serve a local web app: Speak (render a person saying an upload, a recording or typed text), Live
(microphone or file audio streamed in, frames streamed back in sync), Train (a person from a video) and
Evaluate (a person model's report); and the HTTP/WebSocket API under it. Everything the page needs is served
by the app: it works with no network. Listens on 127.0.0.1 only unless --host says otherwise (which needs
--token or --no-token). The token may also come from the environment variable GENEFACE_SERVE_TOKEN."""

from __future__ import annotations

import argparse
import os

from ..cliopts import add_config_options, config_from_args
from .config import ServeConfig
from .server import serve

TOKEN_ENV = "GENEFACE_SERVE_TOKEN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_options(p, ServeConfig)


def run(args: argparse.Namespace) -> int:
    if args.token is None and os.environ.get(TOKEN_ENV):
        args.token = os.environ[TOKEN_ENV]
    config = config_from_args(ServeConfig, args)
    serve(config)
    return 0
