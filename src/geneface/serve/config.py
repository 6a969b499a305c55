"""Settings of `geneface serve` (the web app and its HTTP/WebSocket API)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..cliopts import check_config, opt
from ..device import DEVICES
from ..errors import InputError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_CHARS = 8


@dataclass
class ServeConfig:
    """Options of `geneface serve`."""

    people: Path | None = opt(None, metavar="DIR")
    """Folder of person models (one folder each, as `train all --out` writes); the app trains new people into
    it (default: WORK/people). The bundled demo person is always listed."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but the loopback (127.0.0.1, ::1, localhost) needs --token or --no-token."""
    port: int = opt(7860, min=0, max=65535)
    """Port to listen on (0: a free port; the printed address says which)."""
    token: str | None = opt(None, metavar="TOKEN")
    """Secret that every request must carry (the page's address ?token=..., or the header Authorization: Bearer
    TOKEN); at least 8 characters."""
    no_token: bool = False
    """Serve without a token on a non-loopback --host (anyone who reaches the port can use the app)."""
    work: Path = opt(Path("geneface-serve"), metavar="DIR")
    """The app's work folder: uploads, rendered videos, job records and evaluation reports."""
    device: str = opt("auto", choices=DEVICES)
    """Compute device for rendering and live sessions (training and evaluation pick their own)."""
    max_audio_mb: int = opt(64, min=1, max=100_000)
    """Largest audio upload in MB."""
    max_video_mb: int = opt(2048, min=1, max=1_000_000)
    """Largest video upload in MB (training videos)."""
    max_speech_seconds: float = opt(600.0, above=0.0, max=86_400.0)
    """Longest speech a render job takes, in seconds."""
    max_live: int = opt(4, min=1, max=64)
    """Live sessions at once (more are refused with a message)."""
    live_workers: int = opt(2, min=1, max=64)
    """Processes that render live frames, shared by all sessions (one per core suits a CPU)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise InputError(f"--token must have at least {MIN_TOKEN_CHARS} characters")
        if self.token is not None and self.no_token:
            raise InputError("give --token or --no-token, not both")
        if not self.host or "\x00" in self.host:
            raise InputError("--host must be an address such as 127.0.0.1")
        if not self.loopback and self.token is None and not self.no_token:
            raise InputError(f"--host {self.host} lets other machines reach the app: give --token TOKEN (clients "
                             f"then send it) or --no-token to serve without one")

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is reachable from this machine only."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
