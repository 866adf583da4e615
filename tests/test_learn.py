"""`pipeline learn` through the CLI: kernels recovered from pairs written to disk, the round trip through
`pipeline run`, numpy.linalg.lstsq on the explicit design matrix, gradient descent, and bad pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage, signal

from helpers import assert_error, assert_ok

RNG = np.random.default_rng(12)
EDGE = np.array([[1.0, 1, 1], [1, -8, 1], [1, 1, 1]])


def _photos(count: int = 5, shape: tuple[int, ...] = (40, 44), channels: int = 0) -> list[np.ndarray]:
    """Photo-like random images: smooth structure plus fine texture (every frequency present), float64."""
    full = (channels, *shape) if channels else shape
    sigma = (0, 1.5, 1.5) if channels else 1.5
    return [ndimage.gaussian_filter(RNG.standard_normal(full), sigma) * 50 + RNG.standard_normal(full) * 5 + 100
            for _ in range(count)]


def _write_pairs(root: Path, inputs: list[np.ndarray], targets: list[np.ndarray], first: int = 0) -> None:
    for folder in ("inputs", "targets"):
        (root / folder).mkdir(exist_ok=True)
    for index, (x, y) in enumerate(zip(inputs, targets), start=first):
        tifffile.imwrite(root / "inputs" / f"p{index:02d}.tif", x.astype(np.float64), photometric="minisblack")
        tifffile.imwrite(root / "targets" / f"p{index:02d}.tif", np.asarray(y, dtype=np.float64), photometric="minisblack")


def _job(write_config, root: Path, kernel: dict[str, Any], *, method: str = "lstsq", color: str = "gray",
         training: dict | None = None, **extra: Any) -> Path:
    raw = {"inputs": {"paths": str(root / "inputs"), "color": color}, "targets": {"paths": str(root / "targets"), "color": color},
           "kernel": kernel, "method": method, "output": {"path": str(root / "fit")}, **extra}
    if training:
        raw["training"] = training
    return write_config(raw, "learn.yaml")


def _valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return signal.correlate(x, kernel, mode="valid")


def _fit(root: Path) -> tuple[np.ndarray, dict]:
    return np.load(root / "fit" / "kernel.npy"), json.loads((root / "fit" / "report.json").read_text())


@pytest.mark.parametrize(
    "kernel",
    [EDGE, np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]), RNG.standard_normal((5, 5)), RNG.standard_normal((3, 7)),
     ndimage.gaussian_filter(np.pad([[1.0]], 7), 2.0)],
    ids=["edge", "sobel", "random-5x5", "3x7", "gaussian-15x15"],
)
def test_lstsq_recovers_the_kernel_of_filtered_photos(tmp_path: Path, write_config, run_cli, kernel: np.ndarray) -> None:
    inputs = _photos(4, (48, 52))
    _write_pairs(tmp_path, inputs, [_valid(x, kernel) for x in inputs])
    result = run_cli("learn", _job(write_config, tmp_path, {"shape": list(kernel.shape)}))
    assert_ok(result)
    learned, report = _fit(tmp_path)
    np.testing.assert_allclose(learned, kernel, rtol=1e-6, atol=1e-6 * np.abs(kernel).max())
    assert report["pairing"] == "names" and report["rank"] == kernel.size and report["r2"][0] > 1 - 1e-9


def test_a_3d_kernel_on_volumes_and_a_bias(tmp_path: Path, write_config, run_cli) -> None:
    kernel = RNG.standard_normal((3, 3, 3))
    inputs = [ndimage.gaussian_filter(RNG.standard_normal((9, 20, 22)), 1.0) * 50 for _ in range(3)]
    _write_pairs(tmp_path, inputs, [_valid(x, kernel) + 7.5 for x in inputs])
    assert_ok(run_cli("learn", _volume_job(write_config, tmp_path)))
    learned, report = _fit(tmp_path)
    np.testing.assert_allclose(learned[0, 0], kernel, rtol=1e-6, atol=1e-6)  # with a bias: a layer's bank
    np.testing.assert_allclose(np.load(tmp_path / "fit" / "bias.npy"), [7.5], rtol=1e-6)


def _volume_job(write_config, root: Path) -> Path:
    volume = {"paths": str(root / "inputs"), "layout": "volume"}
    return write_config({"inputs": volume, "targets": {**volume, "paths": str(root / "targets")},
                         "kernel": {"shape": [3, 3, 3], "bias": True}, "output": {"path": str(root / "fit")}}, "learn.yaml")


def test_a_bank_of_2_outputs_from_3_channels(tmp_path: Path, write_config, run_cli) -> None:
    weights = RNG.standard_normal((2, 3, 3, 3))
    inputs = _photos(3, (30, 34), channels=3)
    targets = [np.stack([sum(_valid(x[c], weights[k, c]) for c in range(3)) for k in range(2)]) for x in inputs]
    (tmp_path / "inputs").mkdir()
    (tmp_path / "targets").mkdir()
    for index, (x, y) in enumerate(zip(inputs, targets)):  # channels last, as images store them
        tifffile.imwrite(tmp_path / "inputs" / f"p{index}.tif", np.moveaxis(x, 0, -1).astype(np.float32), planarconfig="contig")
        tifffile.imwrite(tmp_path / "targets" / f"p{index}.tif", np.moveaxis(y, 0, -1).astype(np.float64), planarconfig="contig")
    job = _job(write_config, tmp_path, {"shape": [3, 3], "channels": [3, 2]}, color="keep")
    assert_ok(run_cli("learn", job))
    learned, report = _fit(tmp_path)
    assert learned.shape == (2, 3, 3, 3) and report["kernel_shape"] == [2, 3, 3, 3]
    np.testing.assert_allclose(learned, weights, rtol=1e-4, atol=1e-4)  # float32 inputs
    steps = yaml.safe_load((tmp_path / "fit" / "job.yaml").read_text())["steps"]
    assert list(steps[0]) == ["layer"] and steps[0]["layer"]["correlate"] is True


def test_with_noise_lstsq_equals_numpy_on_the_design_matrix(tmp_path: Path, write_config, run_cli) -> None:
    inputs = _photos(3, (16, 18))
    targets = [_valid(x, RNG.standard_normal((3, 3))) + RNG.normal(0, 5.0, (14, 16)) for x in inputs]
    _write_pairs(tmp_path, inputs, targets)
    design = np.concatenate([sliding_window_view(x, (3, 3)).reshape(-1, 9) for x in inputs])
    design = np.hstack([design, np.ones((len(design), 1))])
    expected, *_ = np.linalg.lstsq(design, np.concatenate([y.ravel() for y in targets]), rcond=None)
    for scheduler, workers in (("sync", 1), ("threads", 2), ("processes", 2)):
        job = _job(write_config, tmp_path, {"shape": [3, 3], "bias": True}, execution={"scheduler": scheduler, "workers": workers},
                   output={"path": str(tmp_path / "fit"), "overwrite": True})
        assert_ok(run_cli("learn", job))
        learned, _ = _fit(tmp_path)
        bias = np.load(tmp_path / "fit" / "bias.npy")
        np.testing.assert_allclose(np.append(learned[0, 0].ravel(), bias), expected, rtol=1e-8, err_msg=scheduler)


def test_the_written_job_reproduces_the_targets_on_held_out_images(tmp_path: Path, write_config, run_cli) -> None:
    kernel = RNG.standard_normal((5, 5))
    inputs = _photos(5, (40, 40))
    _write_pairs(tmp_path, inputs[:3], [_valid(x, kernel) for x in inputs[:3]])
    assert_ok(run_cli("learn", _job(write_config, tmp_path, {"shape": [5, 5]})))
    held_out = tmp_path / "held-out"
    held_out.mkdir()
    for index, x in enumerate(inputs[3:]):
        tifffile.imwrite(held_out / f"h{index}.tif", x, photometric="minisblack")
    assert_ok(run_cli("run", tmp_path / "fit" / "job.yaml", "--set", f"input.paths={held_out}"))
    result = zarr.open_group(str(tmp_path / "fit" / "result.zarr"), mode="r")["0"][:]
    for image, x in zip(result, inputs[3:]):
        np.testing.assert_allclose(image, _valid(x, kernel), rtol=1e-5, atol=1e-5 * 100)
    assert (tmp_path / "fit" / "kernel.png").stat().st_size > 0


def test_adam_converges_to_the_lstsq_kernel_and_learns_behind_a_relu(tmp_path: Path, write_config, run_cli) -> None:
    kernel = np.array([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5], [0.25, 0.5, -0.75]])
    inputs = [RNG.standard_normal((24, 26)) for _ in range(4)]  # well conditioned: descent gets there quickly
    _write_pairs(tmp_path, inputs, [_valid(x, kernel) for x in inputs])
    training = {"epochs": 400, "learning_rate": 0.05, "batch": 2, "seed": 3, "tolerance": 0.0}
    assert_ok(run_cli("learn", _job(write_config, tmp_path, {"shape": [3, 3]}, method="adam", training=training)))
    learned, report = _fit(tmp_path)
    np.testing.assert_allclose(learned, kernel, atol=1e-3)  # one channel to one: kernel.npy is the 3x3 kernel
    assert report["loss"][-1] < report["loss"][0] / 1e4
    relu = tmp_path / "relu"
    relu.mkdir()
    _write_pairs(relu, inputs, [np.maximum(_valid(x, kernel), 0) for x in inputs])
    job = _job(write_config, relu, {"shape": [3, 3], "activation": "relu"}, method="adam", training=training)
    assert_ok(run_cli("learn", job))
    np.testing.assert_allclose(np.load(relu / "fit" / "kernel.npy")[0, 0], kernel, atol=1e-2)
    first = np.load(relu / "fit" / "kernel.npy")
    assert_ok(run_cli("learn", job, "--overwrite"))
    assert np.array_equal(np.load(relu / "fit" / "kernel.npy"), first)  # the same seed: the same bits


@pytest.mark.parametrize("problem", ["counts", "shapes", "kernel-too-large", "nan", "flat", "channels", "activation-lstsq"])
def test_bad_pairs_get_one_line(tmp_path: Path, write_config, run_cli, problem: str) -> None:
    inputs = _photos(3, (20, 22))
    targets = [_valid(x, EDGE) for x in inputs]
    kernel: dict[str, Any] = {"shape": [3, 3]}
    method, code, fragments = "lstsq", 3, ()
    if problem == "counts":
        _write_pairs(tmp_path, inputs, targets[:2])
        tifffile.imwrite(tmp_path / "inputs" / "zz.tif", inputs[0])
        fragments = ("3 input files but 2 target files", "zz.tif")
    elif problem == "shapes":
        _write_pairs(tmp_path, inputs, [t[:-2] for t in targets])
        fragments = ("has shape [16, 20] but its input", "the valid size [18, 20]")
    elif problem == "kernel-too-large":
        _write_pairs(tmp_path, inputs, targets)
        kernel, code, fragments = {"shape": [25, 3]}, 2, ("larger than the image [20, 22]",)
    elif problem == "nan":
        targets[1][3, 3] = np.nan
        _write_pairs(tmp_path, inputs, targets)
        fragments = ("holds NaN",)
    elif problem == "flat":
        flat = [np.full((20, 22), 3.0) for _ in inputs]
        _write_pairs(tmp_path, flat, [_valid(x, EDGE) for x in flat])
        fragments = ("cannot determine the kernel", "rank 1 of 9")
    elif problem == "channels":
        _write_pairs(tmp_path, inputs, targets)
        kernel, code, fragments = {"shape": [3, 3], "channels": [3, 2]}, 2, ("kernel.channels [3, 2] but the inputs have 1 channels",)
    else:
        _write_pairs(tmp_path, inputs, targets)
        kernel, code, fragments = {"shape": [3, 3], "activation": "relu"}, 2, ("least squares cannot fit", "sgd or adam")
    assert_error(run_cli("learn", _job(write_config, tmp_path, kernel, method=method)), code, *fragments)


def test_order_pairing_refuses_other_counts(tmp_path: Path, write_config, run_cli) -> None:
    inputs = _photos(3, (20, 22))
    _write_pairs(tmp_path, inputs, [_valid(x, EDGE) for x in inputs])
    (tmp_path / "targets" / "p02.tif").unlink()
    job = _job(write_config, tmp_path, {"shape": [3, 3]}, pairing="order")
    assert_error(run_cli("learn", job), 3, "3 input files but 2 target files", "paired by sorted order")


def test_the_bundled_example_learns_the_seeds_edge_kernel_back(repo_root: Path, tmp_path: Path, run_cli, monkeypatch) -> None:
    """configs/edge-targets.yaml makes the targets, configs/learn-edges.yaml learns them back (the README's example)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(repo_root / "data" / "samples")
    monkeypatch.chdir(tmp_path)
    configs = repo_root / "configs"
    assert_ok(run_cli("run", configs / "edge-targets.yaml"))
    assert_ok(run_cli("export", "out/edge-targets.zarr", "out/edge-targets", "--format", "tiff"))
    checked = run_cli("validate", configs / "learn-edges.yaml")
    assert_ok(checked)
    assert "valid learn job: 8 pairs (paired by order)" in checked.stdout
    learned = run_cli("learn", configs / "learn-edges.yaml")
    assert_ok(learned)
    assert "learned a 3x3 kernel (1 out, 1 in) from 8 pairs" in learned.stdout
    np.testing.assert_allclose(np.load("out/learned-edges/kernel.npy"), EDGE, atol=1e-5)
    assert_ok(run_cli("run", "out/learned-edges/job.yaml"))
    applied = zarr.open_group("out/learned-edges/result.zarr", mode="r")["0"][:]
    targets = zarr.open_group("out/edge-targets.zarr", mode="r")["0"][:]
    np.testing.assert_allclose(applied, targets, rtol=1e-5, atol=1e-5 * np.abs(targets).max())


def test_every_bundled_learn_job_is_valid() -> None:
    from helpers import LEARN_CONFIGS
    from pipeline.learn_config import LearnConfig, load_learn_config

    assert LEARN_CONFIGS
    for path in LEARN_CONFIGS:
        assert isinstance(load_learn_config(path), LearnConfig)


def test_a_descent_reports_its_loss_per_epoch(tmp_path: Path, write_config, run_cli) -> None:
    inputs = [RNG.standard_normal((16, 18)) for _ in range(2)]
    _write_pairs(tmp_path, inputs, [_valid(x, EDGE) for x in inputs])
    training = {"epochs": 3, "learning_rate": 0.05, "batch": 1, "seed": 1, "tolerance": 0.0}
    result = run_cli("learn", _job(write_config, tmp_path, {"shape": [3, 3]}, method="sgd", training=training))
    assert_ok(result)
    lines = [line for line in result.stderr.splitlines() if "batch " in line]
    assert len(lines) == 3 and all(", loss " in line and " read" in line for line in lines)
    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    losses = [float(line.split(", loss ")[1].split()[0]) for line in lines]
    np.testing.assert_allclose(losses, report["loss"], rtol=1e-5)


def _tiled_pairs(root: Path, kernel: np.ndarray, count: int = 2, shape: tuple[int, int] = (70, 66)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tiled TIFF pairs (16x16 file tiles), noisy valid-sized targets: the fit is not exact."""
    pairs = [(x, _valid(x, kernel) + RNG.normal(0, 2.0, (shape[0] - kernel.shape[0] + 1, shape[1] - kernel.shape[1] + 1)))
             for x in _photos(count, shape)]
    for folder in ("inputs", "targets"):
        (root / folder).mkdir(exist_ok=True)
    for index, (x, y) in enumerate(pairs):
        tifffile.imwrite(root / "inputs" / f"p{index}.tif", x, tile=(16, 16), photometric="minisblack")
        tifffile.imwrite(root / "targets" / f"p{index}.tif", y, tile=(16, 16), photometric="minisblack")
    return pairs


def test_a_tiled_tiff_pair_learned_by_small_tiles_equals_the_whole_fit(tmp_path: Path, write_config, run_cli) -> None:
    pairs = _tiled_pairs(tmp_path, RNG.standard_normal((5, 5)))
    design = np.concatenate([sliding_window_view(x, (5, 5)).reshape(-1, 25) for x, _ in pairs])
    design = np.hstack([design, np.ones((len(design), 1))])
    expected, *_ = np.linalg.lstsq(design, np.concatenate([y.ravel() for _, y in pairs]), rcond=None)
    for tile, scheduler in (("whole", "threads"), (16, "threads"), (16, "sync"), (32, "processes")):
        job = _job(write_config, tmp_path, {"shape": [5, 5], "bias": True}, execution={"scheduler": scheduler, "workers": 2},
                   output={"path": str(tmp_path / "fit"), "overwrite": True})
        assert_ok(run_cli("learn", job, "--set", f"inputs.tile={tile}"))
        learned, report = _fit(tmp_path)
        # 70x66 in tiles of 16: 5x5, the last column counting nothing (its windows would leave the image)
        assert report["pieces"] == {"whole": 2, 16: 2 * 5 * 4, 32: 2 * 3 * 2}[tile], tile
        np.testing.assert_allclose(np.append(learned[0, 0].ravel(), np.load(tmp_path / "fit" / "bias.npy")), expected,
                                   rtol=1e-8, err_msg=f"tile {tile}, {scheduler}")


def test_a_descent_by_tiles_repeats_bit_for_bit_and_follows_the_whole_one(tmp_path: Path, write_config, run_cli) -> None:
    kernel = np.array([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5], [0.25, 0.5, -0.75]])
    _tiled_pairs(tmp_path, kernel, count=3, shape=(40, 36))
    training = {"epochs": 30, "learning_rate": 0.01, "batch": 2, "seed": 5, "tolerance": 0.0}
    job = _job(write_config, tmp_path, {"shape": [3, 3], "bias": True}, method="adam", training=training,
               output={"path": str(tmp_path / "fit"), "overwrite": True}, execution={"scheduler": "threads", "workers": 2})
    fits = {}
    for tile in (16, 16, "whole"):
        assert_ok(run_cli("learn", job, "--set", f"inputs.tile={tile}"))
        fits.setdefault(tile, []).append(np.load(tmp_path / "fit" / "kernel.npy"))
    assert np.array_equal(fits[16][0], fits[16][1])  # the same seed and tiles: the same bits
    np.testing.assert_allclose(fits[16][0], fits["whole"][0], rtol=1e-9, atol=1e-12)


def test_pairs_of_other_channels_than_the_first_get_one_line(tmp_path: Path, write_config, run_cli) -> None:
    inputs = _photos(2, (20, 22))
    _write_pairs(tmp_path, inputs, [_valid(x, EDGE) for x in inputs])
    rgb = np.repeat(inputs[1][..., None], 3, axis=-1).astype(np.float32)
    tifffile.imwrite(tmp_path / "inputs" / "p01.tif", rgb, photometric="rgb")
    job = _job(write_config, tmp_path, {"shape": [3, 3]}, color="keep")
    assert_error(run_cli("learn", job), 3, "p01.tif", "has 3 input and 1 target channels but the first pair 1 and 1")
