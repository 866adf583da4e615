"""One family of errors a user can cause, each carrying the exit code the CLI returns.

Exit codes (documented in the README):

==== =========================================================
0    success
1    unexpected internal error (a bug: please report it)
2    configuration or usage error (bad YAML, unknown key, bad kernel)
3    input error (missing files, empty glob, unreadable or mismatched image)
4    output error (store exists with other settings, not writable, not a pipeline store)
5    store busy: another run holds its lock
130  interrupted (Ctrl-C, SIGINT)
143  terminated (SIGTERM, what batch schedulers and ``kill`` send)
==== =========================================================
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

# Names of options and environment variables whose values are credentials.
_SECRET_NAME = re.compile(r"key|secret|token|passw|credential|auth|signature|sas|connection_?string|private", re.I)
# Shorter values are not scrubbed from messages: they would blank out ordinary words.
_MIN_SECRET = 8


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def scrub_secrets(text: str, options: Mapping[str, Any] | None = None) -> str:
    """``text`` with every credential from the environment (or from ``options``) replaced by ``***``."""
    secrets = [value for name, value in os.environ.items() if is_secret_name(name)]
    secrets += list(_secret_values(options or {}))
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SECRET and secret in text:
            text = text.replace(secret, "***")
    return text


def _secret_values(options: Mapping[str, Any]):
    for name, value in options.items():
        if isinstance(value, Mapping):
            yield from _secret_values(value)
        elif isinstance(value, str) and is_secret_name(str(name)):
            yield value


class PipelineError(ValueError):
    """Base of every error a user can cause; ``exit_code`` is what the CLI returns.

    Its message never shows a credential from the environment: it may be printed, logged as JSON
    and recorded in the store.
    """

    exit_code = 1

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__(scrub_secrets(str(message)), *args)

    def __reduce__(self):
        # Errors raised on distributed workers are pickled; the OS-error bases of some of ours
        # cannot be rebuilt from their args by default.
        return (type(self), (str(self),))


class ConfigError(PipelineError):
    """The configuration (file, ``--set`` overrides or kernel) is invalid."""

    exit_code = 2

    def __init__(self, message: str, problems: tuple[str, ...] = ()):
        super().__init__(message)
        # Every problem found, one "key.path: message" line each, for `pipeline validate`.
        self.problems = problems or (message,)

    def __reduce__(self):  # keep the problems when crossing process boundaries
        return (type(self), (str(self), self.problems))


class KernelError(ConfigError):
    """A kernel cannot be built: unknown name, bad parameters, bad matrix or file."""


class ArgumentTypeError(KernelError, TypeError):
    """An argument of an array function has the wrong type (a float origin, a string for an array);
    a TypeError too, as scipy.ndimage and dask-image raise there."""


class UnsupportedArgument(KernelError, RuntimeError):
    """An argument an array function cannot take: weights of another ndim than the array's, an origin
    per axis of the wrong length, an unknown border mode. A RuntimeError too, as scipy.ndimage raises
    there (and, being a KernelError, a ValueError, as dask-image raises)."""


class InputError(PipelineError, FileNotFoundError):
    """The input images cannot be found, read or stacked; ``path`` names the file when one is at fault."""

    exit_code = 3

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "[Errno ...]" forms
        return str(self.args[0]) if self.args else ""

    @classmethod
    def unreadable(cls, path: str, exc: BaseException) -> InputError:
        """The one error for a file that cannot be read, whichever reader failed on it."""
        if isinstance(exc, InputError):
            return exc
        if isinstance(exc, FileNotFoundError):
            return cls(f"image {path!r} disappeared after the input was listed", path)
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        return cls(
            f"cannot read image {path!r}: {reason} (fix or remove the file, or set input.on_error: skip to "
            f"leave unreadable files out)",
            path,
        )

    def __reduce__(self):  # keep the path when crossing process boundaries
        return (type(self), (str(self), self.path))


class ShapeMismatch(InputError):
    """An image whose size or channels differ from the first image's (``input.shapes: strict``)."""


class DepthMismatch(InputError):
    """An image whose pixel type differs from the first image's (``input.scale: native``)."""


class OutputError(PipelineError, FileExistsError):
    """The output store cannot be written (exists, not a store, not writable)."""

    exit_code = 4

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreLockedError(OutputError):
    """Another live run holds the store's lock."""

    exit_code = 5


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt so a run stops the same way."""


class Interrupted(PipelineError):
    """A run stopped by Ctrl-C (exit 130) or SIGTERM (143); what it wrote is safe and a rerun resumes."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return (type(self), (str(self), self.exit_code))
