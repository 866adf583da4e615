"""Where files live: local paths, or fsspec URLs (``s3://``, ``gs://``, ``memory://``, …) with options.

Local paths keep every local fast path; ``file://`` URLs are turned into local paths when the
config is read, so they are local paths too. Any other URL is reached through fsspec with the
storage options of its side of the job (``input.storage_options``, ``output.storage_options``).

Credentials belong in the environment (``AWS_ACCESS_KEY_ID`` …) or, if they must, in the storage
options; they never go further: secret-looking options are redacted whenever a config is dumped
(the store's provenance records that dump), URLs carrying a password are refused, and messages
are scrubbed of secret values (see ``errors.scrub_secrets``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from pipeline.errors import InputError, PipelineError, is_secret_name, scrub_secrets

REDACTED = "<redacted>"
LOCAL_PROTOCOLS = ("file", "local")
# What an fsspec info() calls the modification time, by filesystem (s3, gcs, azure, local, memory).
_MTIME_KEYS = ("mtime", "LastModified", "updated", "last_modified", "created")
# Header reads fetch this much at a time: an image header, not a whole multi-megabyte object.
HEADER_BLOCK = 1 << 16
STAT_CONCURRENCY = 32

StorageOptions = Mapping[str, Any]


def protocol_of(path: str) -> str:
    """``s3`` for ``s3://b/k``, the first protocol of a chained URL, ``file`` for a plain path."""
    return path.split("://", 1)[0].split("::")[0] if "://" in path else "file"


def is_remote(path: str) -> bool:
    """True for a URL that fsspec reaches (anything but a plain path or ``file://``)."""
    return "://" in path and protocol_of(path) not in LOCAL_PROTOCOLS


def local_or_url(path: str) -> str:
    """``file:///data/x.png`` → ``/data/x.png``: local URLs are local paths, with the fast paths."""
    if "://" in path and protocol_of(path) in LOCAL_PROTOCOLS and "::" not in path:
        return path.split("://", 1)[1] or "/"
    return path


def refuse_embedded_password(path: str) -> str:
    """A URL with ``user:password@`` would carry the password into every message and the store."""
    if "://" in path:
        try:
            password = urlsplit(path).password
        except ValueError:
            password = None
        if password:
            raise ValueError(
                f"{without_userinfo(path)!r} has a password in it; give credentials through the "
                f"environment (e.g. AWS_ACCESS_KEY_ID) or storage_options, never in the URL"
            )
    return path


def without_userinfo(path: str) -> str:
    return re.sub(r"://[^/@]*@", "://", path)


def absolute(path: str) -> str:
    """An absolute local path (workers may run elsewhere); URLs are already absolute."""
    return path if "://" in path else os.path.abspath(path)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options with every secret-looking value replaced, recursively, for provenance and logs."""
    redacted: dict[str, Any] = {}
    for key, value in options.items():
        if is_secret_name(str(key)):
            redacted[key] = REDACTED
        elif isinstance(value, Mapping):
            redacted[key] = redact_options(value)
        elif isinstance(value, str):
            redacted[key] = without_userinfo(value)
        else:
            redacted[key] = value
    return redacted


def recorded_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options read back from a provenance record: the redacted ones dropped (the environment gives them)."""
    return {
        key: recorded_options(value) if isinstance(value, Mapping) else value
        for key, value in options.items()
        if value != REDACTED
    }


def filesystem(
    url: str, options: StorageOptions | None, *, where: str, error: type[PipelineError] = InputError
) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it; one clear ``error`` if there is none."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **dict(options or {}))
    except ImportError:
        raise error(f"{where}: {url!r} needs {_package_for(url)}") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise error(
                f"{where}: unknown protocol {protocol_of(url)!r} in {url!r}; use a local path or an fsspec "
                f"URL such as s3://, gs://, az://, memory://"
            ) from None
        raise _cannot_open(url, options, where, error, exc) from None
    except Exception as exc:  # a bad storage option (TypeError), a credentials file that cannot be read
        raise _cannot_open(url, options, where, error, exc) from None


def _cannot_open(
    url: str, options: StorageOptions | None, where: str, error: type[PipelineError], exc: BaseException
) -> PipelineError:
    side = where.split(".")[0]
    key = f"{side}.storage_options" if side in ("input", "output") else "the storage options"
    return error(f"{where}: cannot open {url!r} with {key}: {explain(exc, options)}")


def _package_for(url: str) -> str:
    from fsspec.registry import known_implementations

    known = known_implementations.get(protocol_of(url), {})
    package = str(known.get("class", "")).split(".")[0]
    if not package:
        return "a package that is not installed"
    return f"the {package} package: pip install {package} (or 'imageconv-pipeline[remote]')"


def explain(exc: BaseException, options: StorageOptions | None = None) -> str:
    """One line saying why a remote operation failed, without any secret."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
        reason = (
            "no credentials found: set them in the environment (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, …) or use anon: true "
            "in storage_options for public data"
        )
    elif _is_connection_failure(exc):
        reason = f"cannot reach the endpoint ({text})"
    elif isinstance(exc, PermissionError):
        reason = f"access denied ({text})"
    elif isinstance(exc, FileNotFoundError):
        reason = f"not found ({text})"
    else:
        reason = text
    return scrub_secrets(reason, options)


def _is_connection_failure(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"})


def is_remote_failure(exc: BaseException) -> bool:
    """An error raised by a storage client library (botocore, aiohttp, google, azure) rather than by us."""
    module = type(exc).__module__.split(".")[0]
    return module in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "google", "azure")


def read_bytes(url: str, options: StorageOptions | None) -> bytes:
    """A whole remote file in one request (how a decode task gets its image)."""
    fs, path = filesystem(url, options, where="input.paths")
    return fs.cat_file(path)


@contextmanager
def opened(path: str, options: StorageOptions | None) -> Iterator[str | IO[bytes]]:
    """A local path as it is, or a remote file opened for reading a header (small ranged reads)."""
    if not is_remote(path):
        yield path
        return
    fs, inner = filesystem(path, options, where="input.paths")
    with fs.open(inner, "rb", block_size=HEADER_BLOCK) as file:
        yield file


def file_size(path: str, options: StorageOptions | None) -> int:
    """Bytes in a file, 0 when it cannot be asked (only for estimates)."""
    try:
        if not is_remote(path):
            return os.path.getsize(path)
        fs, inner = filesystem(path, options, where="input.paths")
        return int(fs.size(inner) or 0)
    except Exception:
        return 0


def file_stats(paths: Sequence[str], options: StorageOptions | None = None) -> np.ndarray:
    """(size, mtime_ns) per file; -1 for a file that cannot be asked about.

    Remote files are asked about concurrently: one request each would otherwise cost a round
    trip per image in the driver.
    """
    stats = np.full((len(paths), 2), -1, dtype=np.int64)
    remote: dict[str, list[int]] = {}  # rows by protocol: one filesystem each
    for row, path in enumerate(paths):
        if is_remote(path):
            remote.setdefault(protocol_of(path), []).append(row)
            continue
        try:
            info = os.stat(path)
        except OSError:
            continue
        stats[row] = (info.st_size, info.st_mtime_ns)
    for rows in remote.values():
        infos = _remote_infos([paths[row] for row in rows], options)
        for row, info in zip(rows, infos):
            if info is not None:
                stats[row] = (int(info.get("size") or 0), _mtime_ns(info))
    return stats


def _remote_infos(urls: Sequence[str], options: StorageOptions | None) -> list[dict[str, Any] | None]:
    fs, _ = filesystem(urls[0], options, where="input.paths")
    inner = [fs._strip_protocol(url) for url in urls]
    if not getattr(fs, "async_impl", False):
        return [_info_or_none(fs.info, path) for path in inner]
    from fsspec.asyn import sync

    async def gather() -> list[dict[str, Any] | None]:
        semaphore = asyncio.Semaphore(STAT_CONCURRENCY)

        async def one(path: str) -> dict[str, Any] | None:
            async with semaphore:
                try:
                    return await fs._info(path)
                except Exception:
                    return None

        return await asyncio.gather(*(one(path) for path in inner))

    return sync(fs.loop, gather)


def _info_or_none(info: Any, path: str) -> dict[str, Any] | None:
    try:
        return info(path)
    except Exception:
        return None


def _mtime_ns(info: Mapping[str, Any]) -> int:
    for key in _MTIME_KEYS:
        value = info.get(key)
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return -1


def entry_folder(entry: str, options: StorageOptions | None) -> str | None:
    """The folder an input entry lists (a glob's part before its first wildcard), None for a file."""
    if glob.has_magic(entry):
        prefix = re.split(r"[*?\[]", entry, maxsplit=1)[0]
        if is_remote(entry):
            return prefix.rstrip("/") if prefix.endswith("/") else prefix.rsplit("/", 1)[0]
        return str((Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent).resolve())
    if not is_remote(entry):
        return str(Path(entry).resolve()) if Path(entry).is_dir() else None
    try:
        fs, path = filesystem(entry, options, where="input.paths")
        return entry.rstrip("/") if fs.isdir(path) else None
    except Exception:  # the listing says what is wrong with the entry
        return None


def is_within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (local paths resolved; URLs compared as text, endpoints not)."""
    if is_remote(path) != is_remote(folder):
        return False
    if not is_remote(path):
        target, parent = Path(path).resolve(), Path(folder)
        return target == parent or parent in target.parents
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")
