"""Input entries (globs, folders, single files; local or fsspec URLs) → a naturally sorted file list.

Listing opens no file: a local name with an image suffix is taken as a file without a stat, and
a remote listing asks for each "folder" (prefix) once, with the objects' types in the answer.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping

from natsort import natsorted, ns

from pipeline.errors import InputError, PipelineError
from pipeline.storage import explain, filesystem, is_remote, local_or_url

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def list_images(
    paths: str | list[str] | tuple[str, ...], storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Expand globs and directories into a naturally sorted list of files, without opening any.

    Entries keep the order they are given in; files within an entry are sorted naturally
    (``img2`` before ``img10``). A file named twice is kept once, at its first place. URLs are
    listed through fsspec with ``storage_options`` and come back as URLs.
    """
    entries = [paths] if isinstance(paths, str) else list(paths)
    found: list[str] = []
    for entry in entries:
        entry = local_or_url(entry)
        found.extend(_expand_remote(entry, storage_options) if is_remote(entry) else _expand(entry))
    return list(dict.fromkeys(found))


def _expand(entry: str) -> list[str]:
    if glob.has_magic(entry):
        # Listing must not stat a million files: a name with an image suffix is taken as a file.
        matches = [
            path
            for path in glob.glob(entry, recursive=True)
            if path.lower().endswith(IMAGE_SUFFIXES) or os.path.isfile(path)
        ]
        if not matches:
            raise _no_match(entry)
        return natsorted(matches, alg=ns.PATH)
    if os.path.isdir(entry):
        with os.scandir(entry) as listing:
            matches = [
                item.path
                for item in listing
                if item.name.lower().endswith(IMAGE_SUFFIXES) and item.is_file()
            ]
        if not matches:
            raise _empty_folder(entry)
        return natsorted(matches, alg=ns.PATH)
    if os.path.isfile(entry):
        return [entry]
    raise InputError(f"input.paths: {entry!r} does not exist")


def _expand_remote(entry: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    fs, path = filesystem(entry, storage_options, where="input.paths")
    fs.invalidate_cache()  # a listing cached by an earlier run in this process may be stale
    try:
        if glob.has_magic(entry):
            found = fs.glob(path, detail=True)
            matches = [name for name, info in found.items() if info.get("type") == "file"]
            if not matches:
                raise _no_match(entry)
        elif fs.isdir(path):
            listing = fs.ls(path, detail=True)
            matches = [
                info["name"]
                for info in listing
                if info.get("type") == "file" and info["name"].lower().endswith(IMAGE_SUFFIXES)
            ]
            if not matches:
                raise _empty_folder(entry)
        elif fs.isfile(path):
            return [entry]
        else:
            raise InputError(f"input.paths: {entry!r} does not exist")
    except PipelineError:
        raise
    except Exception as exc:
        raise InputError(f"input.paths: cannot list {entry!r}: {explain(exc, storage_options)}") from None
    return natsorted((fs.unstrip_protocol(name) for name in matches), alg=ns.PATH)


def _no_match(entry: str) -> InputError:
    return InputError(f"input.paths: {entry!r} matches no files; check the pattern and the working directory")


def _empty_folder(entry: str) -> InputError:
    return InputError(f"input.paths: directory {entry!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
