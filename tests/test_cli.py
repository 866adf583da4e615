"""The ``pipeline`` command end to end: results checked against scipy, read back from disk with zarr."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import imageio.v3 as iio
from PIL import Image
import numpy as np
import pytest
import zarr
from scipy import ndimage

from helpers import RUN_CONFIGS, assert_error, assert_ok, read_store

LUMA = np.array([0.299, 0.587, 0.114])
EDGE = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])
SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])  # not symmetric: catches flips
NATURAL_ORDER = ["img1.png", "img2.png", "img3.png", "img10.png"]
BUILTIN_NAMES = [
    "identity", "box", "blur", "gaussian", "edge", "laplacian",
    "sobel_x", "sobel_y", "prewitt_x", "prewitt_y", "sharpen", "emboss",
]  # fmt: skip
# float32 computation against a float64 oracle on 0-255 values (edge responses reach ~2000).
TOLERANCE = dict(rtol=1e-5, atol=2e-3)


# --------------------------------------------------------------------------- oracle and readers


def gray(path: Path) -> np.ndarray:
    """BT.601 luma of the 0-255 values, computed here independently of the package: a JPEG's is the
    luma plane it stores (Pillow's gray draft decodes only that plane), another file's its mixed RGB."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        with Image.open(path) as image:
            image.draft("L", image.size)
            return np.asarray(image.convert("L"), dtype=np.float64)
    pixels = iio.imread(path).astype(np.float64)
    return pixels if pixels.ndim == 2 else pixels[..., :3] @ LUMA


def oracle(paths: list[Path], kernel: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.convolve(gray(path), kernel, mode="reflect") for path in paths])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def images(small_images) -> Path:
    """Four 48x64 PNGs (RGB and gray mixed) named img10, img2, img1, img3."""
    return small_images()


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "out.zarr"


@pytest.fixture
def job(images, store, make_job, write_config):
    """Factory: a job file convolving ``paths`` (default: the small images) into ``store``."""

    def write(kernel="sobel_x", paths=None, name="job.yaml", **convolve) -> Path:
        return write_config(make_job(images if paths is None else paths, store, kernel, **convolve), name)

    return write


@pytest.fixture
def ran(job, store, run_cli) -> Path:
    """A completed sobel_x run over the small images; returns the store."""
    assert_ok(run_cli("run", job()))
    return store


# --------------------------------------------------------------------------- run


def test_run_matches_scipy(job, images, store, run_cli):
    result = run_cli("run", job())
    assert_ok(result)
    assert result.stdout.startswith("complete: 4 images processed, 0 already written, 0 unreadable (left out), 0 failed")
    assert f"→ {store} (4, 48, 64) float32" in result.stdout

    stored, attrs, sources = read_store(store)
    expected = oracle([images / name for name in NATURAL_ORDER], SOBEL_X)
    assert stored.dtype == np.float32 and stored.shape == (4, 48, 64)
    np.testing.assert_allclose(stored, expected, **TOLERANCE)
    assert attrs["status"] == "complete"
    assert sources == [str(images / name) for name in NATURAL_ORDER]


def test_correlate_flips_nothing(job, images, store, run_cli):
    assert_ok(run_cli("run", job(correlate=True)))
    expected = np.stack([ndimage.correlate(gray(images / n), SOBEL_X, mode="reflect") for n in NATURAL_ORDER])
    np.testing.assert_allclose(read_store(store)[0], expected, **TOLERANCE)


def test_uint8_output_is_clipped_never_wrapped(small_images, job, store, run_cli):
    images = small_images(gray=True, folder="gray")  # integer pixels: the oracle is exact
    assert_ok(run_cli("run", job("edge", paths=images), "--set", "output.dtype=uint8"))
    stored = read_store(store)[0]
    expected = oracle([images / name for name in NATURAL_ORDER], EDGE)
    assert expected.min() < 0 and expected.max() > 255, "the test needs values outside 0-255"
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.clip(np.rint(expected), 0, 255))


def test_schedulers_give_identical_bytes(job, tmp_path, run_cli):
    config = job()
    stored = {}
    for scheduler in ("threads", "sync", "processes"):
        target = tmp_path / f"{scheduler}.zarr"
        assert_ok(run_cli("run", config, "--scheduler", scheduler, "--workers", "2", "--set", f"output.path={target}"))
        stored[scheduler], attrs, _ = read_store(target)
        assert attrs["status"] == "complete"
    assert stored["sync"].tobytes() == stored["threads"].tobytes()
    assert stored["processes"].tobytes() == stored["threads"].tobytes()


def test_bundled_example(repo_root, sample_dir, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(repo_root)  # the example's input glob is relative to the repository
    target = tmp_path / "example.zarr"
    assert_ok(run_cli("run", "configs/example.yaml", "--set", f"output.path={target}"))
    stored, attrs, sources = read_store(target)
    assert stored.shape == (8, 512, 512) and attrs["status"] == "complete"
    assert sources[0] == "data/samples/01-astronaut.jpg"
    expected = ndimage.convolve(gray(sample_dir / "01-astronaut.jpg"), EDGE, mode="reflect")
    np.testing.assert_allclose(stored[0], expected, **TOLERANCE)


# --------------------------------------------------------------------------- run: errors

# imageio tries every plugin on a garbage file, including its deprecated DICOM reader.
IGNORE_IMAGEIO_PLUGIN_WARNINGS = pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")


def test_missing_config_file(tmp_path, run_cli):
    assert_error(run_cli("run", tmp_path / "nope.yaml"), 2, "nope.yaml", "not found")


def test_unknown_key(run_cli, write_config, make_job, images, store):
    raw = make_job(images, store)
    raw["output"]["overwrit"] = True
    assert_error(run_cli("run", write_config(raw)), 2, "output.overwrit", "did you mean 'overwrite'?")


def test_unknown_kernel(job, run_cli):
    assert_error(run_cli("run", job("edgee")), 2, "steps.0.convolve.kernel", "did you mean 'edge'?")


def test_bad_set_override(job, run_cli):
    assert_error(run_cli("run", job(), "--set", "novalue"), 2, "'novalue'", "dotted.key=value")


def test_empty_glob(job, images, run_cli, store):
    assert_error(run_cli("run", job(paths=images / "*.tif")), 3, "*.tif", "matches no files")
    assert not store.exists()


def test_missing_input_path(job, tmp_path, run_cli, store):
    assert_error(run_cli("run", job(paths=tmp_path / "nowhere")), 3, "nowhere", "does not exist")
    assert not store.exists()


@IGNORE_IMAGEIO_PLUGIN_WARNINGS
def test_corrupt_image(job, images, store, run_cli):
    (images / "img5.png").write_bytes(b"this is not a png" * 10)
    assert_error(run_cli("run", job()), 3, "cannot read image", "img5.png")
    attrs = read_store(store)[1]  # failed mid-run: the store says so
    assert attrs["status"] == "failed" and "img5.png" in attrs["error"]


@IGNORE_IMAGEIO_PLUGIN_WARNINGS
def test_corrupt_first_image(job, images, run_cli):
    (images / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert_error(run_cli("run", job()), 3, "cannot read image", "img0.png")


def test_image_of_another_size(small_images, job, run_cli):
    small_images(("img7.png",), size=(32, 24))
    assert_error(run_cli("run", job()), 3, "img7.png", "(24, 32)", "same size")


def test_rerun_of_a_complete_store_does_nothing(ran, job, run_cli):
    result = run_cli("run", job())
    assert_ok(result)
    assert result.stdout.startswith("complete: 0 images processed, 4 already written")


def test_another_job_on_an_existing_store_needs_overwrite(ran, job, images, run_cli):
    assert_error(run_cli("run", job("edge")), 4, str(ran), "different job", "--overwrite")
    assert_ok(run_cli("run", job(), "--overwrite", "--set", "steps.0.convolve.kernel=edge"))
    stored, attrs, _ = read_store(ran)
    assert attrs["status"] == "complete"
    np.testing.assert_allclose(stored[0], oracle([images / "img1.png"], EDGE)[0], **TOLERANCE)


def test_output_path_is_a_file(job, store, run_cli):
    store.write_text("precious")
    assert_error(run_cli("run", job(), "--overwrite"), 4, str(store), "is a file")
    assert store.read_text() == "precious"


def test_refuses_to_replace_a_foreign_directory(job, store, run_cli):
    store.mkdir()
    (store / "thesis.txt").write_text("precious")
    assert_error(run_cli("run", job(), "--overwrite"), 4, "refusing to write into", str(store))
    assert (store / "thesis.txt").read_text() == "precious"


def test_debug_lets_the_exception_through(job, run_cli):
    result = run_cli("--debug", "run", job("edgee"))
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "ConfigError"
    assert result.exc_info[2] is not None  # the traceback is kept, not swallowed


# --------------------------------------------------------------------------- validate


def test_validate_lists_every_problem(make_job, write_config, images, store, run_cli):
    raw = make_job(images, store, "edgee")
    raw["output"]["overwrit"] = True
    path = write_config(raw)
    result = run_cli("validate", path)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any("steps.0.convolve.kernel: unknown kernel 'edgee'" in line for line in lines)
    assert any("output.overwrit: unknown key" in line for line in lines)
    assert "Traceback" not in result.output


def test_validate_good_file(job, run_cli, store):
    result = run_cli("validate", job())
    assert_ok(result)
    assert "valid: 4 input files" in result.stdout
    assert not store.exists()  # validating writes nothing


def test_validate_missing_input(job, tmp_path, run_cli):
    assert_error(run_cli("validate", job(paths=tmp_path / "nowhere")), 3, "does not exist")


# --------------------------------------------------------------------------- kernels


def test_kernels_lists_every_builtin(run_cli):
    result = run_cli("kernels")
    assert_ok(result)
    for name in BUILTIN_NAMES:
        assert f" {name} " in result.stdout, name


def test_kernel_matrix_with_params(run_cli):
    result = run_cli("kernels", "gaussian", "-p", "sigma=2")
    assert_ok(result)
    header, *matrix = result.stdout.strip().splitlines()
    assert "shape (17, 17)" in header
    assert len(matrix) == 17
    assert all(len(row.strip(" []").split()) == 17 for row in matrix)


def test_kernel_matrix_values(run_cli):
    result = run_cli("kernels", "sobel_x")
    assert_ok(result)
    rows = result.stdout.strip().splitlines()[1:]
    np.testing.assert_array_equal(np.array([row.strip(" []").split() for row in rows], dtype=float), SOBEL_X)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["nosuch"], ["unknown kernel 'nosuch'"]),
        (["gaussian", "-p", "sigma"], ["--param 'sigma'", "key=value"]),
        (["gaussian", "-p", "sigma=wide"], ["'wide' is not a number"]),
        (["gaussian", "-p", "size=3"], ["does not take ['size']"]),
    ],
)
def test_kernel_errors(run_cli, args, fragments):
    assert_error(run_cli("kernels", *args), 2, *fragments)


# --------------------------------------------------------------------------- inspect


def test_inspect(ran, images, run_cli):
    result = run_cli("inspect", ran)
    assert_ok(result)
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines() if len(line.split(None, 1)) == 2)
    assert fields["status"].strip() == "complete"
    assert fields["shape"].strip() == "[4, 48, 64]"
    assert fields["dtype"].strip() == "float32"
    assert "blosc" in fields["codec"] and "lz4" in fields["codec"]
    assert f"0: {images / 'img1.png'}" in result.stdout


def test_inspect_json(ran, images, run_cli):
    result = run_cli("inspect", "--json", ran)
    assert_ok(result)
    info = json.loads(result.stdout)
    assert info["status"] == "complete"
    assert (info["shape"], info["dtype"], info["axes"]) == ([4, 48, 64], "float32", ["image", "y", "x"])
    assert "lz4" in info["codec"]
    assert info["sources"][0] == str(images / "img1.png")
    assert info["source_count"] == 4
    assert info["steps"][0]["kernel"]["source"] == "sobel_x"


def test_inspect_missing_store(tmp_path, run_cli):
    assert_error(run_cli("inspect", tmp_path / "nope.zarr"), 3, "nope.zarr", "does not exist")


def test_inspect_folder_that_is_not_a_store(tmp_path, run_cli):
    assert_error(run_cli("inspect", tmp_path), 3, "not a store written by this pipeline")


# --------------------------------------------------------------------------- export


def exported(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_export_png(ran, tmp_path, run_cli):
    outdir = tmp_path / "png"
    result = run_cli("export", ran, outdir, "--format", "png")
    assert_ok(result)
    assert "wrote 4 png files" in result.stdout
    assert exported(outdir) == ["0_img1.png", "1_img2.png", "2_img3.png", "3_img10.png"]
    stored = read_store(ran)[0].astype(np.float64)
    for index, name in enumerate(exported(outdir)):
        pixels = iio.imread(outdir / name)
        assert pixels.dtype == np.uint8 and pixels.shape == (48, 64)
        image = stored[index]  # float results are stretched to 0-255 per image
        np.testing.assert_array_equal(pixels, np.rint((image - image.min()) / (image.max() - image.min()) * 255))


def test_export_tiff_keeps_float_values(ran, tmp_path, run_cli):
    outdir = tmp_path / "tiff"
    assert_ok(run_cli("export", ran, outdir, "--format", "tiff"))
    stored = read_store(ran)[0]
    for index, name in enumerate(exported(outdir)):
        pixels = iio.imread(outdir / name)
        assert pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels, stored[index])


def test_export_index_range(ran, tmp_path, run_cli):
    outdir = tmp_path / "some"
    assert_ok(run_cli("export", ran, outdir, "--format", "tiff", "--index", "1:3"))
    assert exported(outdir) == ["1_img2.tif", "2_img3.tif"]


@pytest.mark.parametrize("index, exit_code, fragment", [("9:12", 3, "no images selected"), ("one", 2, "--index 'one'")])
def test_export_bad_index(ran, tmp_path, run_cli, index, exit_code, fragment):
    assert_error(run_cli("export", ran, tmp_path / "none", "--index", index), exit_code, fragment)


# --------------------------------------------------------------------------- the installed command


LAUNCHERS = {
    "console-script": [str(Path(sys.executable).parent / "pipeline")],
    "python-m": [sys.executable, "-m", "pipeline"],
}


def launch(launcher: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    command = LAUNCHERS[launcher] + [str(arg) for arg in args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_command_version(launcher, tmp_path):
    done = launch(launcher, "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"pipeline {version('imageconv-pipeline')}"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_command_runs(launcher, job, store, tmp_path):
    done = launch(launcher, "run", job(), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("complete: 4 images processed")
    assert read_store(store)[1]["status"] == "complete"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_command_config_error(launcher, job, tmp_path):
    done = launch(launcher, "run", job("edgee"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "steps.0.convolve.kernel" in lines[0]
    assert "Traceback" not in done.stderr


def test_command_debug_shows_traceback(job, tmp_path):
    done = launch("console-script", "--debug", "run", job("edgee"), cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr
    assert "ConfigError" in done.stderr and "unknown kernel 'edgee'" in done.stderr


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_bundled_config_validates(config, repo_root, run_cli, monkeypatch):
    monkeypatch.chdir(repo_root)  # their paths are relative to the repository
    result = run_cli("validate", config)
    assert_ok(result)
    assert "valid: 8 input files" in result.stdout or "valid: 3 input files" in result.stdout


# --------------------------------------------------------------------------- counts said right


def inspected(result, key: str) -> str:
    """The value of one row of `pipeline inspect`'s table."""
    assert_ok(result)
    (value,) = [line.split(None, 1)[1].strip() for line in result.stdout.splitlines() if line.split(None, 1)[:1] == [key]]
    return value


def test_inspect_says_how_many_sources_it_lists(ran, run_cli):
    shown = run_cli("inspect", ran, "--sources", "2")
    assert inspected(shown, "sources") == "4 files (first 2 listed)"
    assert "1: " in shown.stdout and "2: " not in shown.stdout
    assert inspected(run_cli("inspect", ran), "sources") == "4 files"
    assert inspected(run_cli("inspect", ran, "--sources", "0"), "sources") == "4 files (none listed)"


def test_one_of_a_kind_is_singular(small_images, job, store, run_cli):
    config = job(paths=small_images(("one.png",), folder="single"))
    checked = run_cli("validate", config)
    assert_ok(checked)
    assert "valid: 1 input file (headers checked (all 1)" in checked.stdout
    planned = run_cli("plan", config)
    assert_ok(planned)
    assert "1 image, " in planned.stdout and "1 images" not in planned.stdout
    assert_ok(run_cli("run", config))
    assert inspected(run_cli("inspect", store), "sources") == "1 file"


# --------------------------------------------------------------------------- export of a store with gaps


@pytest.fixture
def with_unreadable(small_images, job, store, run_cli) -> Path:
    """A store of the small images and a broken img4.png (index 3), run with input.on_error: skip."""
    folder = small_images()
    (folder / "img4.png").write_bytes(b"broken")
    assert_ok(run_cli("run", job(paths=folder), "--set", "input.on_error=skip"))
    return store


def test_export_leaves_out_unreadable_images_and_says_so(with_unreadable, tmp_path, run_cli):
    outdir = tmp_path / "png"
    result = run_cli("export", with_unreadable, outdir)
    assert_ok(result)
    assert result.stdout == f"wrote 4 png files to {outdir} (1 image left out: unreadable source 'img4.png')\n"
    assert exported(outdir) == ["0_img1.png", "1_img2.png", "2_img3.png", "4_img10.png"]


def test_export_refuses_to_overwrite_without_the_flag(ran, tmp_path, run_cli):
    outdir = tmp_path / "png"
    assert_ok(run_cli("export", ran, outdir, "--format", "tiff"))
    first = outdir / "0_img1.tif"
    first.write_bytes(b"edited by hand")
    assert_error(run_cli("export", ran, outdir, "--format", "tiff"), 4, "refusing to overwrite", str(first), "--overwrite")
    assert first.read_bytes() == b"edited by hand"
    assert_ok(run_cli("export", ran, outdir, "--format", "tiff", "--overwrite"))
    np.testing.assert_array_equal(iio.imread(first), read_store(ran)[0][0])


# --------------------------------------------------------------------------- plan


def test_plan_shows_each_stages_output_bytes(job, write_config, make_job, images, store, run_cli):
    raw = make_job(images, store, "edge", mode="valid")
    raw["steps"].append({"normalize": "minmax"})
    raw["execution"] = {"compute_dtype": "float64"}
    config = write_config(raw)
    described = run_cli("plan", config, "--json")
    assert_ok(described)
    stages = json.loads(described.stdout)["stages"]
    # 4 images of 48 x 64; a 3 x 3 kernel in valid mode leaves 46 x 62; float64 is 8 bytes.
    assert [stage["bytes"] for stage in stages] == [4 * 46 * 62 * 8] * 2
    assert [stage["bytes"] for stage in stages] == [int(np.prod(stage["shape"])) * 8 for stage in stages]
    shown = run_cli("plan", config)
    assert_ok(shown)
    assert "output bytes" in shown.stdout and shown.stdout.count(f"{4 * 46 * 62 * 8 / 1024:.1f} KiB") == 2


def test_the_cli_starts_dask_without_its_optional_imports_and_they_still_import(tmp_path: Path) -> None:
    """dask imports xarray and pandas (≈ 0.5 s), scipy.sparse, scipy.fftpack, psutil and jinja2 only
    to recognise types the CLI never hands it; the CLI refuses those imports while dask starts, and
    keeps dask.array from copying NumPy's docstrings."""
    pytest.importorskip("xarray")
    folder = tmp_path / "in"
    folder.mkdir()
    iio.imwrite(folder / "a.png", np.zeros((8, 8), np.uint8))
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{paths: {folder}}}\nsteps: [{{convolve: {{kernel: blur}}}}]\noutput: {{path: {tmp_path / 'o.zarr'}}}\n")
    refused = ("xarray", "pandas", "scipy.sparse", "scipy.fftpack", "psutil", "jinja2")
    probe = (
        "import atexit, importlib, sys\n"
        "def said():\n"
        "    import dask.array.core as core, dask.array.fft as fft, dask.system as system\n"
        f"    loaded = [name in sys.modules for name in {refused!r}]\n"
        f"    later = [importlib.import_module(name).__name__ for name in {refused!r}]\n"
        "    import dask.array as da\n"
        "    copied = 'copied from numpy' in (da.sin.__doc__ or '') + (da.routines.roll.__doc__ or '')\n"
        "    print(loaded, core.xr is None, fft.scipy is None, system.psutil is None, copied, later)\n"
        "atexit.register(said)\n"
        f"sys.argv = ['pipeline', 'run', {str(job)!r}, '-q']\n"
        "from pipeline.cli import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{[False] * len(refused)} True True True False {list(refused)}"
    assert zarr.open_array(tmp_path / "o.zarr" / "0").shape == (1, 8, 8)
    # the Python API leaves dask as it is
    api = subprocess.run([sys.executable, "-c", "import pipeline, dask.array as da, dask.array.core as c; "
                          "print(c.xr is not None, 'copied from numpy' in da.sin.__doc__)"],
                         capture_output=True, text=True, timeout=120)
    assert api.stdout.strip() == "True True", api.stderr
