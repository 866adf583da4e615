"""Listing local inputs: globs through symbolic links, literal names, and what is not a regular file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from natsort import natsort_keygen, natsorted, ns

from pipeline.errors import InputError
from pipeline.sources.listing import list_images, natural_key


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``a/`` with two images, a subfolder holding one, and a link in it back to itself (a loop)."""
    root = tmp_path / "a"
    (root / "sub").mkdir(parents=True)
    for name in ("img1.png", "img2.png", "sub/s.png"):
        (root / name).write_bytes(b"x")
    (root / "sub" / "again").symlink_to(".")
    return root


def test_a_glob_through_a_symlink_loop_lists_each_file_once(folder: Path) -> None:
    listed = list_images(f"{folder}/**/*.png")
    assert listed == [str(folder / "img1.png"), str(folder / "img2.png"), str(folder / "sub" / "s.png")]


def test_a_link_to_a_folder_elsewhere_is_followed_and_each_real_file_kept_once(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.png").write_bytes(b"x")
    (folder / "elsewhere").symlink_to(other)  # not an ancestor: followed
    (folder / "sub" / "same.png").symlink_to("again/../img1.png")  # a second name of img1.png
    listed = list_images([f"{folder}/**/*.png", str(other / "o.png")])
    assert listed == [
        str(folder / "elsewhere" / "o.png"), str(folder / "img1.png"), str(folder / "img2.png"),
        str(folder / "sub" / "s.png"),
    ]


def test_a_literal_name_with_glob_characters_is_that_file(tmp_path: Path) -> None:
    for name in ("img1.png", "img[1].png"):
        (tmp_path / name).write_bytes(b"x")
    assert list_images(str(tmp_path / "img[1].png")) == [str(tmp_path / "img[1].png")]
    assert list_images(str(tmp_path / "img[12].png")) == [str(tmp_path / "img1.png")]  # no such file: a pattern


@pytest.mark.parametrize("entry", ["{folder}/*.png", "{folder}", "{folder}/**"])
def test_a_named_pipe_is_left_out_with_one_warning(folder: Path, entry: str, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(folder / "zz_pipe.png")
    with caplog.at_level(logging.WARNING, logger="pipeline.sources.listing"):
        listed = list_images(entry.format(folder=folder))
    assert str(folder / "zz_pipe.png") not in listed and str(folder / "img1.png") in listed
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert caplog.records[0].getMessage() == (
        f"input.paths: left out 1 entry that is not a regular file: {str(folder / 'zz_pipe.png')!r} (a named pipe)"
    )


def test_several_entries_left_out_are_counted_in_one_warning(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(folder / "p1.png")
    os.mkfifo(folder / "p2.png")
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    with caplog.at_level(logging.WARNING, logger="pipeline.sources.listing"):
        assert list_images(str(folder)) == [str(folder / "img1.png"), str(folder / "img2.png")]
    (record,) = caplog.records
    assert record.getMessage() == (
        f"input.paths: left out 3 entries that are not regular files, the first {str(folder / 'gone.png')!r} "
        f"(a dangling symbolic link)"
    )


def test_a_named_pipe_given_by_name_is_an_input_error(folder: Path) -> None:
    os.mkfifo(folder / "pipe.png")
    with pytest.raises(InputError, match="is not a regular file .a named pipe.") as info:
        list_images(str(folder / "pipe.png"))
    assert str(folder / "pipe.png") in str(info.value)


@pytest.mark.parametrize("entry", ["{folder}/loop.png", "{folder}", "{folder}/*.png"])
def test_a_self_looping_symlink_is_an_input_error(folder: Path, entry: str) -> None:
    (folder / "loop.png").symlink_to("loop.png")
    with pytest.raises(InputError, match="is a symbolic link that loops") as info:
        list_images(entry.format(folder=folder))
    assert str(folder / "loop.png") in str(info.value)


def test_a_self_looping_symlink_is_exit_3(folder: Path, make_job, write_config, run_cli) -> None:
    from helpers import assert_error

    (folder / "loop.png").symlink_to("loop.png")
    config = write_config(make_job(folder, folder.parent / "out.zarr"))
    assert_error(run_cli("run", config), 3, "loop.png", "is a symbolic link that loops")


def test_listing_stats_no_plain_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folder entries carry their type: a listing of plain files costs no stat per file."""
    (tmp_path / "d" / "e").mkdir(parents=True)
    for index in range(200):
        (tmp_path / "d" / ("e" if index % 2 else "") / f"{index}.png").write_bytes(b"")
    calls: list[str] = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path, *a, real=real, **k: calls.append(path) or real(path, *a, **k))
    for entry in ("d", "d/*.png", "d/**/*.png", "d/*/*.png"):
        calls.clear()
        assert len(list_images(str(tmp_path / entry))) in (100, 200)
        assert len(calls) < 10, (entry, len(calls))


def test_a_relative_path_that_does_not_exist_says_what_it_was_resolved_against(tmp_path, monkeypatch) -> None:
    import pytest

    from pipeline.errors import InputError
    from pipeline.sources.listing import list_images

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=f"'photos' does not exist \\(resolved against {tmp_path}\\)"):
        list_images("photos")
    with pytest.raises(InputError, match=f"matches no files \\(resolved against {tmp_path}\\)"):
        list_images("photos/*.png")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="ab-_.0123456789/", min_size=1, max_size=14), min_size=1, max_size=4))
def test_the_natural_key_is_natsorts_path_key(parts: list[str]) -> None:
    """The fast key sorts exactly as natsort's ``ns.PATH`` (the order stores record their sources in)."""
    path = "/".join(parts)
    assert natural_key(path) == natsort_keygen(alg=ns.PATH)(path)
    assert natural_key("s3://bucket/" + path) == natsort_keygen(alg=ns.PATH)("s3://bucket/" + path)


def test_names_that_are_not_ascii_are_sorted_by_natsort_alongside_the_others() -> None:
    names = ["b/ü10.png", "b/u2.png", "b/ü9.png", "a/z.png"]
    assert sorted(names, key=natural_key) == natsorted(names, alg=ns.PATH)
