"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class GeneFaceError(Exception):
    """A problem with the user's input or environment, explained in one short message."""

    exit_code = 2


class InputError(GeneFaceError):
    """A path, file or option the user gave cannot be used."""


class NoFaceError(GeneFaceError):
    """Face tracking failed on too many frames."""


class MissingModelError(GeneFaceError):
    """An optional model or its weights are not installed."""
