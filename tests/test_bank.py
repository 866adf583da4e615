"""Kernel banks (CNN layers) on one block: every strategy against scipy, the cost model, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from threadpoolctl import threadpool_limits

from pipeline.steps.bank import BANK_STRATEGIES, Bands, correlate_bank, choose_bank_strategy

BORDERS = ("reflect", "nearest", "mirror", "wrap", "constant")
CVAL = 0.5
# relative to the sum of |terms| of each output sample
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def oracle(block: np.ndarray, weights: np.ndarray, bias, mode: str, cval: float = CVAL) -> np.ndarray:
    """sum_c scipy.ndimage.correlate(block[c], weights[k, c]) + bias[k], in float64."""
    block = block.astype(np.float64)
    out = np.stack([
        sum(ndimage.correlate(block[c], weights[k, c], mode=mode, cval=cval) for c in range(weights.shape[1]))
        for k in range(weights.shape[0])
    ])
    return out if bias is None else out + np.reshape(bias, (-1,) + (1,) * (out.ndim - 1))


def assert_matches_oracle(got, block, weights, bias, mode) -> None:
    expected = oracle(block, weights, bias, mode)
    terms = oracle(np.abs(block), np.abs(weights), None if bias is None else np.abs(bias), mode, abs(CVAL))
    assert got.dtype == block.dtype and got.shape == expected.shape
    error = np.abs(got - expected) / np.maximum(terms, np.finfo(np.float64).tiny)
    assert error.max() <= TOLERANCE[block.dtype.type], f"worst relative error {error.max():.3g}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def random_bank(rng, out_channels: int, channels: int, kernel: tuple[int, ...]):
    return rng.standard_normal((out_channels, channels, *kernel)), rng.standard_normal(out_channels)


# --- every strategy against the oracle ----------------------------------------------------------


@pytest.mark.parametrize("strategy", BANK_STRATEGIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", BORDERS)
@pytest.mark.parametrize("kernel", [(3, 3), (4, 2), (5, 4)], ids=["odd", "even", "mixed"])
@pytest.mark.parametrize("out_channels, channels", [(1, 1), (2, 3), (4, 1)])
def test_every_strategy_matches_scipy(rng, strategy, dtype, mode, kernel, out_channels, channels) -> None:
    weights, bias = random_bank(rng, out_channels, channels, kernel)
    block = rng.uniform(-1, 1, (channels, 23, 31)).astype(dtype)
    plan = choose_bank_strategy(weights, bias, dtype=dtype, strategy=strategy)
    assert plan.strategy == strategy
    assert_matches_oracle(correlate_bank(block, plan, edge_mode=mode, cval=CVAL), block, weights, bias, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("start", [(), (5, 200)])
def test_gemm_over_several_tiles_and_bands(rng, dtype, threads, start) -> None:
    # 600 columns from column 200 of the image: 4 tiles of 256 per row; 100 rows: 3 bands
    weights, bias = random_bank(rng, 5, 3, (3, 4))
    block = rng.uniform(-1, 1, (3, 100, 600)).astype(dtype)
    with threadpool_limits(threads):
        got = correlate_bank(block, choose_bank_strategy(weights, bias, dtype=dtype, strategy="gemm"), start=start)
    assert_matches_oracle(got, block, weights, bias, "reflect")


@pytest.mark.parametrize("strategy", BANK_STRATEGIES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", BORDERS)
def test_bands_hand_over_the_window_of_the_whole_result(rng, monkeypatch, strategy, threads, mode) -> None:
    from pipeline.steps import bank

    monkeypatch.setattr(bank, "GEMM_BAND_PIXELS", 4 * (2 * bank.GEMM_TILE + 16))  # rows of two tiles: bands of 4
    weights, bias = random_bank(rng, 3, 2, (5, 4))
    block = np.moveaxis(rng.uniform(-1, 1, (23, 300, 2)).astype(np.float32), -1, 0)  # channels last in memory
    plan = choose_bank_strategy(weights, bias, dtype=np.float32, strategy=strategy)
    whole = correlate_bank(block, plan, edge_mode=mode, cval=CVAL, start=(0, 7))
    window = (slice(3, 22), slice(1, 299))
    reduce = lambda band: np.maximum(band[:, 0::2][:, : band.shape[1] // 2], band[:, 1::2])  # noqa: E731
    for how in (None, reduce):
        got: dict[int, np.ndarray] = {}
        bands = Bands(lambda first, band: got.__setitem__(first, band.copy()), rows=2, window=window, reduce=how)
        with threadpool_limits(threads):
            assert correlate_bank(block, plan, edge_mode=mode, cval=CVAL, start=(0, 7), bands=bands) is None
        if strategy == "gemm":
            assert sorted(got) == list(range(0, 19, 4))  # bands of 4 rows, the last of 3
        want = whole[(slice(None), *window)]
        # with a reduce, gemm adds the bias after the max: the same bytes still
        joined = np.concatenate([got[first] for first in sorted(got)], axis=1)
        assert joined.tobytes() == (want if how is None else reduce(want)).tobytes()


@pytest.mark.parametrize("strategy", BANK_STRATEGIES)
@pytest.mark.parametrize("mode", BORDERS)
def test_kernels_longer_than_the_block(rng, strategy, mode) -> None:
    weights, bias = random_bank(rng, 2, 2, (9, 6))
    block = rng.uniform(-1, 1, (2, 3, 4))
    plan = choose_bank_strategy(weights, bias, dtype=np.float64, strategy=strategy)
    got = correlate_bank(block, plan, edge_mode=mode, cval=CVAL)
    assert_matches_oracle(got, block, weights, bias, mode)


@pytest.mark.parametrize("strategy", BANK_STRATEGIES)
def test_without_bias_and_on_a_strided_block(rng, strategy) -> None:
    weights, _ = random_bank(rng, 3, 2, (3, 3))
    block = rng.uniform(-1, 1, (2, 40, 30)).astype(np.float32)[:, ::-2, 1::2]  # not contiguous
    got = correlate_bank(block, choose_bank_strategy(weights, dtype=np.float32, strategy=strategy))
    assert_matches_oracle(got, block, weights, None, "reflect")


@pytest.mark.parametrize("strategy", BANK_STRATEGIES)
@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
def test_one_dimensional_banks(rng, strategy, mode) -> None:
    weights, bias = random_bank(rng, 3, 2, (5,))
    block = rng.uniform(-1, 1, (2, 300))
    plan = choose_bank_strategy(weights, bias, dtype=np.float64, strategy=strategy)
    got = correlate_bank(block, plan, edge_mode=mode, cval=CVAL)
    assert_matches_oracle(got, block, weights, bias, mode)


@pytest.mark.parametrize("strategy", ["direct", "fft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["reflect", "mirror", "wrap", "constant"])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (2, 3, 4), (1, 3, 3)])
def test_volume_banks(rng, strategy, dtype, mode, kernel) -> None:
    weights, bias = random_bank(rng, 2, 3, kernel)
    block = rng.uniform(-1, 1, (3, 7, 12, 10)).astype(dtype)
    plan = choose_bank_strategy(weights, bias, dtype=dtype, strategy=strategy)
    assert plan.reach == tuple(m // 2 for m in kernel)
    assert_matches_oracle(correlate_bank(block, plan, edge_mode=mode, cval=CVAL), block, weights, bias, mode)


def test_gemm_forced_on_volumes_falls_back_to_direct(rng) -> None:
    plan = choose_bank_strategy(random_bank(rng, 2, 1, (3, 3, 3))[0], dtype=np.float32, strategy="gemm")
    assert plan.strategy == "direct" and plan.describe() == "direct (scipy)"


# --- the plan -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "out_channels, channels, side, expected",
    [
        (2, 1, 3, "direct (opencv)"),
        (8, 1, 3, "gemm (blas)"),
        (16, 3, 5, "gemm (blas)"),
        (16, 16, 3, "gemm (blas)"),
        (4, 1, 15, "gemm (blas)"),
        (8, 3, 31, "fft (scipy)"),
    ],
)
def test_the_cost_model_picks_the_fastest_measured_strategy(rng, out_channels, channels, side, expected) -> None:
    # what benchmarks/bank_engines.py measured fastest on one thread for float32 2048² blocks
    weights, bias = random_bank(rng, out_channels, channels, (side, side))
    plan = choose_bank_strategy(weights, bias, dtype=np.float32)
    assert plan.describe() == expected
    assert plan.cost() == min(choose_bank_strategy(weights, bias, dtype=np.float32, strategy=s).cost() for s in BANK_STRATEGIES)


def test_a_bank_of_separable_kernels_goes_direct() -> None:
    # eight gaussians of 15×15: 30 taps each as two 1-D passes, against gemm's 225 multiply-adds
    x = np.arange(-7, 8)
    gaussians = np.stack([np.outer(g, g) for g in (np.exp(-(x**2) / (2 * s**2)) for s in np.linspace(1, 3, 8))])
    plan = choose_bank_strategy(gaussians[:, None], dtype=np.float32)
    assert plan.describe() == "direct (opencv)"
    assert {pair.strategy for row in plan.pairs for pair in row} == {"separable"}


@pytest.mark.parametrize(
    "channels, kernel, expected", [(1, (1, 3, 3), "direct (opencv)"), (2, (5, 5, 5), "fft (scipy)")]
)
def test_the_cost_model_on_volumes(rng, channels, kernel, expected) -> None:
    assert choose_bank_strategy(random_bank(rng, channels, channels, kernel)[0], dtype=np.float32).describe() == expected


def test_plan_properties(rng) -> None:
    weights, bias = random_bank(rng, 4, 2, (4, 5))
    plans = {s: choose_bank_strategy(weights, bias, dtype=np.float32, strategy=s) for s in BANK_STRATEGIES}
    assert {s: p.describe() for s, p in plans.items()} == {
        "direct": "direct (opencv)", "gemm": "gemm (blas)", "fft": "fft (scipy)"
    }
    assert all(p.reach == (2, 2) for p in plans.values())
    assert all(p.cost() > 0 for p in plans.values())
    assert [p.reproducible for p in plans.values()] == [True, True, False]
    assert plans["gemm"].weights.dtype == np.float64 and plans["gemm"].bias.dtype == np.float64


# --- reproducibility: a pixel's bytes do not depend on the block it is computed in --------------

# (y0, y1, x0, x1) of a 150×600 image: corners, edges, tile boundaries (256) and odd sizes
WINDOWS = [(0, 40, 0, 97), (3, 77, 13, 300), (50, 150, 256, 600), (7, 99, 301, 555), (0, 150, 1, 599),
           (149, 150, 0, 600)]


def tiled_differences(plan, image: np.ndarray, threads: int = 1) -> list[tuple[int, ...]]:
    """The windows whose result computed from a sub-block (with halo) differs from the whole image's."""
    whole = correlate_bank(image, plan)
    halo = plan.reach
    differing = []
    with threadpool_limits(threads):
        for y0, y1, x0, x1 in WINDOWS:
            by, bx = max(0, y0 - halo[0]), max(0, x0 - halo[1])
            block = image[:, by : y1 + halo[0], bx : x1 + halo[1]]
            part = correlate_bank(block, plan, start=(by, bx))
            if not np.array_equal(part[:, y0 - by : y1 - by, x0 - bx : x1 - bx], whole[:, y0:y1, x0:x1]):
                differing.append((y0, y1, x0, x1))
    return differing


@pytest.mark.parametrize(
    "strategy, dtype",
    [
        ("gemm", np.float32),
        ("gemm", np.float64),
        ("direct", np.float32),
        ("direct", np.float64),
    ],
)
@pytest.mark.parametrize("out_channels, channels, side", [(16, 3, 5), (1, 1, 3), (4, 2, 4), (16, 16, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_bytes_do_not_depend_on_the_block(rng, strategy, dtype, out_channels, channels, side, threads) -> None:
    plan = choose_bank_strategy(*random_bank(rng, out_channels, channels, (side, side)), dtype=dtype, strategy=strategy)
    assert plan.reproducible
    image = rng.uniform(-1, 1, (channels, 150, 600)).astype(dtype)
    assert tiled_differences(plan, image, threads) == []


@pytest.mark.parametrize(
    "strategy, dtype, weights",
    [
        ("fft", np.float32, np.random.default_rng(1).standard_normal((2, 1, 5, 5))),  # transform size = block's
        ("direct", np.float64, np.random.default_rng(2).standard_normal((2, 1, 9, 9))),  # OpenCV: DFT from 50 taps
    ],
    ids=["fft", "opencv dft"],
)
def test_plans_that_say_they_are_not_reproducible_are_not(rng, strategy, dtype, weights) -> None:
    # (boxes are separable passes now, reproducible: OpenCV's running-sum boxFilter is not used)
    plan = choose_bank_strategy(weights, dtype=dtype, strategy=strategy)
    assert not plan.reproducible
    assert tiled_differences(plan, rng.uniform(-1, 1, (1, 150, 600)).astype(dtype)) != []


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 3), (9,), (1, 1, 1, 1, 1, 1)])
def test_weights_of_the_wrong_rank(shape) -> None:
    with pytest.raises(ValueError, match=r"need 3 to 5 dimensions, \(out_channels, in_channels, \*kernel\)"):
        choose_bank_strategy(np.ones(shape), dtype=np.float32)


@pytest.mark.parametrize(
    "weights, bias, message",
    [
        (np.ones((2, 1, 0, 3)), None, "are empty"),
        (np.full((2, 1, 3, 3), np.nan), None, "weights contain NaN"),
        (np.ones((4, 1, 3, 3)), np.ones(3), r"bias has shape \(3,\) but the weights have 4 output channels"),
        (np.ones((4, 1, 3, 3)), np.ones((4, 1)), r"bias has shape \(4, 1\)"),
        (np.ones((2, 1, 3, 3)), [0.0, np.inf], "bias contains NaN or infinite"),
    ],
)
def test_bad_banks(weights, bias, message) -> None:
    with pytest.raises(ValueError, match=message):
        choose_bank_strategy(weights, bias, dtype=np.float32)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"strategy": "winograd"}, "bank strategy must be auto or one of direct, gemm, fft; got 'winograd'"),
     ({"dtype": np.uint8}, "float32 or float64 blocks; got uint8")],
)
def test_bad_plan_options(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        choose_bank_strategy(np.ones((2, 1, 3, 3)), **{"dtype": np.float32, **kwargs})


@pytest.mark.parametrize("strategy", BANK_STRATEGIES)
def test_a_block_with_other_channels_names_both_counts(strategy) -> None:
    plan = choose_bank_strategy(np.ones((8, 3, 3, 3)), dtype=np.float32, strategy=strategy)
    with pytest.raises(ValueError, match=r"block has 1 channels but the layer's weights \(8, 3, 3, 3\) take 3 input"):
        correlate_bank(np.zeros((1, 10, 10), np.float32), plan)


@pytest.mark.parametrize(
    "block, options, message",
    [
        (np.zeros((10, 10), np.float32), {},
         r"block has shape \(10, 10\) but the bank's kernels are 2-D: it needs \(channels, y, x\)"),
        (np.zeros((3, 10, 10), np.int16), {}, "float32 or float64 blocks; got int16"),
        (np.zeros((3, 10, 10), np.float32), {"edge_mode": "periodic"}, "edge mode must be one of reflect, mirror"),
    ],
)
def test_bad_blocks(block, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        correlate_bank(block, choose_bank_strategy(np.ones((2, 3, 3, 3)), dtype=np.float32), **options)

