"""Input entries (globs, folders, single files; local or fsspec URLs) → a naturally sorted file list.

Listing opens no file and stats no plain file: folders and globs are walked with ``os.scandir``,
whose entries carry their type, so only symbolic links cost a stat (and a readlink, to find the
file they name). Only regular files are listed
(reading a named pipe would wait forever); the named pipes, sockets, devices and dangling links
found are left out and counted in one warning. A symbolic link that loops is an input error.
``**`` follows links to folders, except into a folder the walk is already inside (``again -> .``
would list every file forty times), and a file reached by two names is listed once.

A remote listing asks for each "folder" (prefix) once, with the objects' types in the answer.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import glob
import logging
import os
import re
import stat
from pathlib import PurePath
from typing import Any, Iterator, Mapping

from pipeline.errors import InputError, PipelineError
from pipeline.storage import explain, filesystem, is_remote, local_or_url

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FILE, FOLDER, MISSING = "a regular file", "a folder", "missing"
_SPECIAL = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device"}

log = logging.getLogger(__name__)

_NUMBERS = re.compile(r"(\d+)")
_DECIMAL = re.compile(r"\.\d").match

# A listed name, its scandir entry (None when it was not scanned: a literal name) and the real
# path of its folder, ending in a separator: a plain entry's real path is that and its name.
Candidate = tuple[str, "os.DirEntry[str] | None", str]


@functools.cache
def _natsort_path() -> Any:
    """natsort's ``ns.PATH`` key, for the few names ``natural_key`` leaves to it (natsort takes 10 ms to import)."""
    from natsort import natsort_keygen, ns

    return natsort_keygen(alg=ns.PATH)


def list_images(
    paths: str | list[str] | tuple[str, ...], storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Expand globs and directories into a naturally sorted list of files, without opening any.

    Entries keep the order they are given in; files within an entry are sorted naturally
    (``img2`` before ``img10``). A file named twice, or reached by two names (links), is kept
    once, at its first place. A name that exists is that file or folder, glob characters and all
    (``img[1].png``). URLs are listed through fsspec with ``storage_options`` and come back as
    URLs. What is not a regular file is left out, and logged in one warning.
    """
    entries = [paths] if isinstance(paths, str) else list(paths)
    files: dict[str, str] = {}  # real file → the first name it was found by
    left_out: dict[str, str] = {}  # name → what it is
    folders: dict[str, str] = {}  # folder → its real path, as links are resolved
    for entry in entries:
        entry = local_or_url(entry)
        if is_remote(entry):
            found = {name: name for name in _expand_remote(entry, storage_options)}
        else:
            found = _expand(entry, left_out, folders)
        for name, real in found.items():
            files.setdefault(real, name)
    if left_out:
        log.warning(_left_out_message(left_out))
    return list(files.values())


def natural_key(path: str) -> tuple[Any, ...]:
    """natsort's ``ns.PATH`` key (``img2`` before ``img10``, folders first, then name, then suffixes), fast.

    natsort takes about 60 µs a name, a tenth of what a run spends on a thumbnail: ASCII names (all
    but a few) are keyed here the same way (tests compare the keys), each folder once; others by natsort.

    >>> sorted(["b/img1.png", "a/img10.png", "a/img2.png"], key=natural_key)
    ['a/img2.png', 'a/img10.png', 'b/img1.png']
    """
    folder, base = os.path.split(path)
    if not path.isascii() or base in ("", "."):  # (no file name: natsort keys the folder's)
        return _natsort_path()(path)
    suffixes: list[str] = []
    # PurePath(base).suffixes, without building a path
    found = [] if base.endswith(".") else ["." + part for part in base.lstrip(".").split(".")[1:]]
    for index, suffix in enumerate(reversed(found)):  # as natsort.utils.path_splitter
        if _DECIMAL(suffix) or index > 1 or len(suffix) > 5:
            break
        suffixes.append(suffix)
    suffixes.reverse()
    base = base.replace("".join(suffixes), "")
    return _folder_key(folder) + tuple(_ascii_key(part) for part in (base, *suffixes) if part)


@functools.lru_cache(maxsize=4096)
def _folder_key(folder: str) -> tuple[Any, ...]:
    return tuple(_ascii_key(part) for part in PurePath(folder).parts) if folder else ()


def _ascii_key(part: str) -> tuple[Any, ...]:
    """Text and numbers alternating, text first (``""`` before a leading number), as natsort keys them."""
    pieces = [int(piece) if piece[0].isdigit() else piece for piece in _NUMBERS.split(part) if piece]
    return ("", *pieces) if pieces and isinstance(pieces[0], int) else tuple(pieces)


def kind_of(mode: int) -> str:
    """What a ``st_mode`` says a path is, as messages name it."""
    if stat.S_ISREG(mode):
        return FILE
    return FOLDER if stat.S_ISDIR(mode) else _SPECIAL.get(stat.S_IFMT(mode), "a special file")


def _expand(entry: str, left_out: dict[str, str], folders: dict[str, str]) -> dict[str, str]:
    """One local entry's files, name → real path, naturally sorted; what else it holds goes to ``left_out``."""
    try:
        if glob.has_magic(entry) and not os.path.lexists(entry):
            candidates: Iterator[Candidate] = _glob(entry)
            empty = _no_match(entry)
        else:
            kind = _kind(entry)
            if kind == FILE:
                return {entry: _resolve(entry, folders)}
            if kind == MISSING:
                raise InputError(f"input.paths: {entry!r} does not exist{_resolved(entry)}")
            if kind != FOLDER:
                raise InputError(f"input.paths: {entry!r} is not a regular file ({kind}); name an image file or a folder")
            candidates, empty = _folder(entry), _empty_folder(entry)
        found = _regular_files(candidates, left_out, folders)
    except PipelineError:
        raise
    except OSError as exc:
        raise InputError(f"input.paths: cannot list {entry!r}: {exc}") from None
    if not found:
        raise empty
    return {name: found[name] for name in sorted(found, key=natural_key)}


def _regular_files(
    candidates: Iterator[Candidate], left_out: dict[str, str], folders: dict[str, str]
) -> dict[str, str]:
    """The regular files among ``candidates``, name → real path; folders are passed over silently."""
    found: dict[str, str] = {}
    for name, item, folder_real in candidates:
        kind = _kind(name, item)
        if kind == FILE:
            plain = item is not None and not item.is_symlink()
            found[name] = folder_real + item.name if plain else _resolve(name, folders)
        elif kind not in (FOLDER, MISSING):
            left_out[name] = kind
    return found


def _kind(path: str, item: os.DirEntry[str] | None = None) -> str:
    """A regular file, a folder, missing, or what else ``path`` is; a link that loops is an input error.

    A scanned entry that is not a link knows its type: no stat.
    """
    try:
        if item is None or item.is_symlink():
            return kind_of(os.stat(path).st_mode)
        if item.is_file():
            return FILE
        return FOLDER if item.is_dir() else kind_of(item.stat(follow_symlinks=False).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # a dangling link, or removed while listed
        return "a dangling symbolic link" if os.path.islink(path) else MISSING
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise InputError(
            f"input.paths: {path!r} is a symbolic link that loops ({exc.strerror}); remove it or point it at a file",
            path,
        ) from None


def _resolve(path: str, folders: dict[str, str]) -> str:
    """``os.path.realpath`` of a file that exists (no loop), with the real paths of ``folders`` kept.

    realpath checks every part of a path; a folder of links would pay that for each link.
    """
    folder, name = os.path.split(path)
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    real = os.path.join(folders[folder], name)
    try:
        target = os.readlink(real)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return real  # not a link
    return _resolve(os.path.join(folders[folder], target), folders)


def _folder(path: str) -> Iterator[Candidate]:
    """A folder's entries with an image suffix."""
    real = os.path.join(os.path.realpath(path), "")
    with os.scandir(path) as items:
        listed = [item for item in items if item.name.lower().endswith(IMAGE_SUFFIXES)]
    return ((item.path, item, real) for item in listed)


def _glob(pattern: str) -> Iterator[Candidate]:
    """What ``glob.glob(pattern, recursive=True)`` finds, with ``**`` kept out of link loops."""
    if pattern.endswith(os.sep):  # matches folders only
        return iter(())
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if part and not (part == "**" and parts[-1:] == ["**"]):  # ** twice is ** once
            parts.append(part)
    if parts[-1] == "**":  # a trailing ** lists every file below
        parts.append("*")
    return _walk(os.sep if os.path.isabs(pattern) else "", parts, frozenset())


def _walk(folder: str, parts: list[str], inside: frozenset[str], real: str | None = None) -> Iterator[Candidate]:
    """Matches of ``parts`` in ``folder`` (``""``: the working directory), whose real path is ``real``.

    ``inside``: the real folders a ``**`` walk came through, which it does not enter again.
    """
    literal = 0
    while literal < len(parts) - 1 and not glob.has_magic(parts[literal]):
        literal += 1
    if literal or real is None:
        folder, parts = os.path.join(folder, *parts[:literal]), parts[literal:]
        real = os.path.realpath(folder or os.curdir)
    part, rest = parts[0], parts[1:]
    if not glob.has_magic(part):  # a last part without a pattern: one name
        path = os.path.join(folder, part)
        if os.path.lexists(path):
            yield path, None, os.path.join(real, "")
        return
    if part == "**":
        inside |= {real}
        yield from _walk(folder, rest, inside, real)  # ** matches no folder too
        for name, sub_real in _subfolders(folder, real, "*"):
            if sub_real not in inside:
                yield from _walk(name, parts, inside, sub_real)
        return
    if not rest:
        prefix, real_prefix = os.path.join(folder, ""), os.path.join(real, "")
        yield from ((prefix + item.name, item, real_prefix) for item in _scan(folder, part))
        return
    for name, sub_real in _subfolders(folder, real, part):
        yield from _walk(name, rest, inside, sub_real)


def _scan(folder: str, part: str) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` whose names match ``part``, hidden ones only if ``part`` starts with a dot."""
    hidden = part.startswith(".")
    try:
        with os.scandir(folder or os.curdir) as items:
            named = {item.name: item for item in items if hidden or item.name[0] != "."}
    except (FileNotFoundError, NotADirectoryError):  # a literal part of the pattern names nothing
        return []
    return [named[name] for name in fnmatch.filter(named, part)]


def _subfolders(folder: str, real: str, part: str) -> Iterator[tuple[str, str]]:
    """The folders (and links to folders) in ``folder`` matching ``part``, with their real paths."""
    for item in _scan(folder, part):
        try:
            if not item.is_dir():
                continue
        except OSError:  # a link that loops: not a folder (and no name to list unless it matches)
            continue
        name = os.path.join(folder, item.name)
        yield name, os.path.realpath(name) if item.is_symlink() else os.path.join(real, item.name)


def _left_out_message(left_out: Mapping[str, str]) -> str:
    first = min(left_out, key=natural_key)
    if len(left_out) == 1:
        return f"input.paths: left out 1 entry that is not a regular file: {first!r} ({left_out[first]})"
    return (
        f"input.paths: left out {len(left_out)} entries that are not regular files, "
        f"the first {first!r} ({left_out[first]})"
    )


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
    return sorted((fs.unstrip_protocol(name) for name in matches), key=natural_key)


def _no_match(entry: str) -> InputError:
    return InputError(f"input.paths: {entry!r} matches no files{_resolved(entry)}; check the pattern and the working directory")


def _resolved(entry: str) -> str:
    """What a relative path was taken relative to, for a message (absolute paths say nothing more)."""
    return "" if os.path.isabs(entry) else f" (resolved against {os.getcwd()})"


def _empty_folder(entry: str) -> InputError:
    return InputError(f"input.paths: directory {entry!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
