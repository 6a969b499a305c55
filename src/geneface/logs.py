"""Logging for the command line: one line per message, warnings prefixed ``warning:``.

Library code logs through ``logging.getLogger(__name__)`` (every logger below ``geneface``) and never prints;
the CLI calls `setup_logging` once. Progress bars are tqdm's, on stderr.
"""

from __future__ import annotations

import logging
import sys

ROOT = "geneface"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (it may be replaced after setup)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbosity: int = 0) -> None:
    """Send geneface's log to stderr: -1 warnings only (--quiet), 0 notes too, 1 debug (--verbose)."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        if getattr(handler, "_geneface", False):
            logger.removeHandler(handler)
    handler = _Stderr()
    handler._geneface = True  # type: ignore[attr-defined]
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
