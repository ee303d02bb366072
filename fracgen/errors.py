"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class FracgenError(Exception):
    """Base class of fracgen's expected failures (bad input, bad data, a full disk)."""


class UsageError(FracgenError):
    """An option, file or folder the user gave cannot be used; the message says what to change."""
