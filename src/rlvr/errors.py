"""Errors raised for bad user input. Each names the offending field and how to fix it."""


class RLVRError(Exception):
    """Base class of every error rlvr raises on purpose."""


class ConfigError(RLVRError, ValueError):
    """A configuration key or value is wrong; the message names the key and the valid options."""


class UnknownNameError(ConfigError, KeyError):
    """A method name is not in its registry; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MissingInputError(RLVRError, ValueError):
    """A method needs a field of the context that the caller did not fill."""


class Interrupted(RLVRError):
    """The run stopped on SIGINT/SIGTERM after saving a checkpoint; the CLI exits ``128 + signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
