"""Errors of the user's making in crema_fast: the CLI prints them as one line and exits 2."""


class CremaError(Exception):
    """Base of errors raised on purpose for bad input, bad configuration or bad state."""


class ConfigError(CremaError, ValueError):
    """A configuration that cannot work (e.g. a mask ratio that leaves no visible patch)."""
