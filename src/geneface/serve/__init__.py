"""`geneface serve`: a local web app (Speak, Live, Train, Evaluate) and the HTTP/WebSocket API under it, built
on the public API (`PersonModel`, `train_person`, `evaluate`, `SpeechStream`). See `app` for the routes and
`live` for the streaming protocol."""

from .app import create_app
from .config import ServeConfig
from .server import Background, background, serve

__all__ = ["Background", "ServeConfig", "background", "create_app", "serve"]
