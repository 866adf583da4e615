"""One family of errors a user can cause, each carrying the exit code the CLI returns.

Exit codes (documented in the README):

==== =========================================================
0    success
1    unexpected internal error (a bug: please report it)
2    configuration or usage error (bad YAML, unknown key, bad kernel)
3    input error (missing files, empty glob, unreadable or mismatched image)
4    output error (store exists with other settings, not writable, not a pipeline store)
5    store busy: another run holds its lock
130  interrupted (Ctrl-C)
==== =========================================================
"""

from __future__ import annotations


class PipelineError(ValueError):
    """Base of every error a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code = 1

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
        return cls(f"cannot read image {path!r}: {reason}", path)

    def __reduce__(self):  # keep the path when crossing process boundaries
        return (type(self), (str(self), self.path))


class OutputError(PipelineError, FileExistsError):
    """The output store cannot be written (exists, not a store, not writable)."""

    exit_code = 4

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreLockedError(OutputError):
    """Another live run holds the store's lock."""

    exit_code = 5
