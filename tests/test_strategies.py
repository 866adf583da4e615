"""One kernel on one block: what the cost model picks, that every engine and strategy computes
``scipy.ndimage.correlate``, and that a direct or separable sample has the same bytes whatever block
it was computed in (tile, slab, memory budget)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.steps import strategies
from pipeline.steps.kernels import build_kernel
from pipeline.steps.opencv_filters import opencv_dft_taps
from pipeline.steps.strategies import STRATEGIES, choose_engine, correlate_block, choose_strategy, separate

RNG = np.random.default_rng(31)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def _dense(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


def _rank(r: int, m: int, n: int | None = None) -> np.ndarray:
    """An m x n kernel of rank exactly r (almost surely): a sum of r random outer products."""
    return sum(np.outer(RNG.normal(size=m), RNG.normal(size=n or m)) for _ in range(r))


EDGE = build_kernel("edge").weights
GAUSS15 = build_kernel("gaussian", {"sigma": 2.0, "truncate": 3.5}).weights
BOX31 = build_kernel("box", {"size": 31}).weights
GAUSS3D = build_kernel("gaussian", {"sigma": 1.0, "ndim": 3}).weights
DENSE = {shape: _dense(*shape) for shape in [(5, 5), (7, 7), (8, 8), (11, 11), (12, 12), (13, 11), (31, 31)]}
ROW = {m: _dense(1, m) for m in (7, 9, 151, 201)}
RANK = {(2, 9): _rank(2, 9), (4, 11): _rank(4, 11), (5, 11): _rank(5, 11), (2, 5): _rank(2, 5)}


def _plan(weights: np.ndarray, dtype, *, strategy: str = "auto", edge_mode: str = "reflect"):
    """Plan as ``bind_convolution`` does, for blocks with the kernel's dimensions."""
    engine = choose_engine(dtype, weights, edge_mode)
    return choose_strategy(weights, (0,) * weights.ndim, engine=engine, dtype=dtype, strategy=strategy)


# --- the cost model ---------------------------------------------------------------------------

PICKS = [
    # (what, weights, dtype, plan.describe(), separable terms)
    ("edge 3x3", EDGE, F32, "direct (opencv)", 0),
    ("gaussian 15x15", GAUSS15, F32, "separable (opencv)", 1),
    # sepFilter2D, not boxFilter: its running sums start at the block's edge and round (float64 always)
    ("box 31x31", BOX31, F32, "separable (opencv)", 1),
    ("box 31x31 float64", BOX31, F64, "separable (opencv)", 1),
    ("random 31x31", DENSE[31, 31], F32, "fft (opencv)", 0),
    ("random 11x11: 121 taps, below filter2D's DFT", DENSE[11, 11], F32, "direct (opencv)", 0),
    ("random 12x12: 144 taps, filter2D is a DFT", DENSE[12, 12], F32, "fft (opencv)", 0),
    ("random 7x7 float64: 49 taps", DENSE[7, 7], F64, "direct (opencv)", 0),
    ("random 8x8 float64: 64 taps, a DFT in float64", DENSE[8, 8], F64, "fft (opencv)", 0),
    ("random 8x8 float32", DENSE[8, 8], F32, "direct (opencv)", 0),
    ("rank 2, 9x9", RANK[2, 9], F32, "separable (opencv)", 2),
    ("rank 4, 11x11", RANK[4, 11], F32, "separable (opencv)", 4),
    ("rank 5, 11x11: does not split", RANK[5, 11], F32, "direct (opencv)", 0),
    ("1-D, 9 taps", ROW[9], F32, "direct (opencv)", 0),
    ("1-D, 151 taps: one sepFilter2D pass, never a DFT", ROW[151], F32, "direct (opencv)", 0),
    ("1-D, 201 taps", ROW[201], F32, "fft (opencv)", 0),
    ("gaussian 3-D", GAUSS3D, F32, "separable (scipy)", 1),
    ("gaussian 3-D float64", GAUSS3D, F64, "separable (scipy)", 1),
    ("edge on uint16 blocks", EDGE, np.dtype(np.uint16), "direct (scipy)", 0),
]


@pytest.mark.parametrize("weights, dtype, described, terms", [p[1:] for p in PICKS], ids=[p[0] for p in PICKS])
def test_the_cost_model_picks(weights: np.ndarray, dtype, described: str, terms: int) -> None:
    plan = _plan(weights, dtype)
    assert plan.describe() == described
    assert len(plan.factors) == terms
    assert plan.reproducible == (plan.strategy != "fft")


def test_opencv_computes_by_dft_from_130_taps_in_float32_and_50_in_float64() -> None:
    import cv2

    if not cv2.checkHardwareSupport(4):  # cv::CPU_SSE3: OpenCV's float32 threshold is 50 without it
        pytest.skip("no SSE3")
    assert (opencv_dft_taps(F32), opencv_dft_taps(F64)) == (130, 50)


FORCED = [
    # (what, weights, dtype, boundary, forced strategy, plan.describe())
    ("direct with 961 taps: filter2D would be a DFT", DENSE[31, 31], F32, "reflect", "direct", "direct (scipy)"),
    ("direct with 225 taps", GAUSS15, F32, "reflect", "direct", "direct (scipy)"),
    ("direct float64 with 64 taps", DENSE[8, 8], F64, "reflect", "direct", "direct (scipy)"),
    ("direct float64 with 49 taps", DENSE[7, 7], F64, "reflect", "direct", "direct (opencv)"),
    ("fft with 9 taps: filter2D would be direct", EDGE, F32, "reflect", "fft", "fft (scipy)"),
    ("fft with 144 taps", DENSE[12, 12], F32, "reflect", "fft", "fft (opencv)"),
    ("separable that does not split", DENSE[5, 5], F32, "reflect", "separable", "direct (opencv)"),
    ("separable 3-D", GAUSS3D, F32, "reflect", "separable", "separable (scipy)"),
    ("wrap has no OpenCV border", EDGE, F32, "wrap", "direct", "direct (scipy)"),
]


@pytest.mark.parametrize("weights, dtype, boundary, strategy, described", [f[1:] for f in FORCED], ids=[f[0] for f in FORCED])
def test_a_forced_strategy_names_the_engine_that_computes_it(weights, dtype, boundary: str, strategy: str, described: str) -> None:
    assert _plan(weights, dtype, strategy=strategy, edge_mode=boundary).describe() == described


# --- the exact rank split -------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(9, 9), (5, 12)])
def test_separate_returns_one_term_per_rank(rank: int, shape: tuple[int, int]) -> None:
    kernel = _rank(rank, *shape)
    terms = separate(kernel)
    assert terms is not None and len(terms) == rank
    np.testing.assert_allclose(sum(np.multiply.outer(*term) for term in terms), kernel, rtol=0, atol=1e-12)


def test_separate_refuses_what_does_not_split() -> None:
    assert separate(_rank(5, 11)) is None  # rank 5: more terms than passes pay for
    assert separate(ROW[9]) is None  # one filtered axis: a direct pass already
    assert separate(np.zeros((3, 3))) is None
    assert separate(np.multiply.outer(_rank(2, 4), np.ones(3))) is None  # 3-D, not one outer product
    (term,) = separate(GAUSS3D)
    np.testing.assert_allclose(np.multiply.outer(np.multiply.outer(*term[:2]), term[2]), GAUSS3D, rtol=0, atol=1e-15)


# --- kernels typed by hand: separable and constant to the compute dtype's precision ----------------

# A Gaussian pasted as a float32 matrix: the outer product rounded to float32, of full rank exactly.
GAUSS15_F32 = GAUSS15.astype(np.float32).astype(np.float64)
# A box typed with one value, rounded to float32 (1/961 is not a binary fraction).
BOX31_F32 = np.full((31, 31), np.float32(1 / 961), dtype=np.float64)


def test_a_float32_outer_product_is_more_than_one_term_to_an_exact_test() -> None:
    """What the tolerance is for: singular values above 1e-9 of the largest (rounding noise of float64)
    count several terms, each a pair of passes; to float32's precision it is one."""
    singular = np.linalg.svd(GAUSS15_F32, compute_uv=False)
    assert np.sum(singular > singular[0] * 1e-9) > 1
    assert len(separate(GAUSS15_F32, dtype=F32)) == 1


def test_a_float32_outer_product_is_planned_separable_and_computes_scipys_result() -> None:
    plan = _plan(GAUSS15_F32, F32)
    assert plan.describe() == "separable (opencv)" and len(plan.factors) == 1
    assert 0 < plan.separation.residual <= plan.separation.tolerance < 1e-6
    block = (RNG.uniform(0, 255, size=(64, 300))).astype(np.float32)
    want = ndimage.correlate(block.astype(np.float64), GAUSS15_F32, mode="reflect")
    got = correlate_block(block, plan, edge_mode="reflect", cval=0.0)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5


def test_float64_blocks_keep_a_float32_outer_product_whole() -> None:
    """In float64 the split would move the result by ≈ 2e-8 of it, millions of ulp: not separable."""
    plan = _plan(GAUSS15_F32, F64)
    assert plan.strategy != "separable"
    assert plan.separation.residual > plan.separation.tolerance


def test_a_genuinely_rank_two_kernel_is_not_planned_as_one_pass() -> None:
    """A second term far above float32's rounding (1e-4 of the first) takes a second pass of its own."""
    profile = GAUSS15[7] / GAUSS15[7].max()
    second = np.outer(np.linspace(-1, 1, 15), np.cos(np.linspace(0, 3, 15)))
    kernel = (np.outer(profile, profile) + 1e-4 * second).astype(np.float32).astype(np.float64)
    plan = _plan(kernel, F32)
    assert plan.strategy == "separable" and len(plan.factors) == 2
    block = RNG.uniform(0, 255, size=(40, 90)).astype(np.float32)
    want = ndimage.correlate(block.astype(np.float64), kernel, mode="reflect")
    got = correlate_block(block, plan, edge_mode="reflect", cval=0.0)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5


def test_a_kernel_just_off_separable_is_not_split() -> None:
    """Noise of 1e-5 of the weights (a kernel that only looks separable) would show in the result: dense."""
    noisy = GAUSS15 * (1 + 1e-5 * RNG.normal(size=GAUSS15.shape))
    plan = _plan(noisy, F32)
    assert plan.strategy != "separable" and separate(noisy, dtype=F32) is None
    assert plan.separation.residual > 1e-6


def test_a_typed_box_is_constant_and_splits_into_constant_vectors() -> None:
    plan = _plan(BOX31_F32, F32)
    assert plan.describe() == "separable (opencv)"
    assert plan.separation.constant and plan.separation.residual == 0
    (term,) = plan.factors
    assert all(np.ptp(vector) == 0 for vector in term)
    np.testing.assert_allclose(np.multiply.outer(*term), BOX31_F32, rtol=1e-15)
    block = RNG.uniform(0, 255, size=(50, 80)).astype(np.float32)
    want = ndimage.correlate(block.astype(np.float64), BOX31_F32, mode="nearest")
    np.testing.assert_allclose(correlate_block(block, plan, edge_mode="nearest", cval=0.0), want, rtol=1e-5)


def test_a_box_with_one_weight_off_is_not_constant() -> None:
    off = BOX31_F32.copy()
    off[3, 4] *= 1.001
    split = strategies.separation(off, dtype=F32)
    assert not split.constant and len(split.factors) == 2  # the box plus one weight: two exact terms
    assert split.residual <= split.tolerance


def test_a_typed_3d_box_and_gaussian_split_into_one_term_each() -> None:
    box = np.full((5, 5, 5), np.float32(1 / 125), dtype=np.float64)
    gauss = GAUSS3D.astype(np.float32).astype(np.float64)
    assert strategies.separation(box, dtype=F32).constant
    (term,) = separate(gauss, dtype=F32)
    assert np.abs(_outer3(term) - gauss).sum() / np.abs(gauss).sum() < strategies.separation_tolerance(F32)
    assert separate(gauss, dtype=F64) is None


def _outer3(term) -> np.ndarray:
    return np.multiply.outer(np.multiply.outer(term[0], term[1]), term[2])


def test_the_tolerance_follows_the_compute_dtype() -> None:
    assert 4e-7 < strategies.separation_tolerance(F32) < 6e-7
    assert strategies.separation_tolerance(F64) < 1e-14
    assert strategies.separation_tolerance(np.uint16) == strategies.separation_tolerance(F64)  # computed in float64


# --- every engine x strategy against the oracle ------------------------------------------------------

# (weights, origin): odd, even and non-square sizes, non-zero origins, one kernel past filter2D's DFT
ORACLE_KERNELS = {
    "rank-2 5x5": (RANK[2, 5], (0, 0)),
    "rank-1 4x6, origin (-1, 1)": (_rank(1, 4, 6), (-1, 1)),
    "dense 3x3, origin (1, -1)": (DENSE[5, 5][:3, :3], (1, -1)),
    "dense 13x11": (DENSE[13, 11], (0, 0)),
    "1-D 7, origin 2": (ROW[7], (0, 2)),
}
BORDERS = [("reflect", 0.0), ("nearest", 0.0), ("mirror", 0.0), ("wrap", 0.0), ("constant", 0.0), ("constant", 2.5)]


@pytest.mark.parametrize("kernel", ORACLE_KERNELS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("engine", ["opencv", "scipy"])
def test_every_engine_and_strategy_is_scipys_correlate(engine: str, strategy: str, dtype, kernel: str) -> None:
    weights, origin = ORACLE_KERNELS[kernel]
    plan = choose_strategy(weights, origin, engine=engine, dtype=dtype, strategy=strategy)
    assert plan.strategy == strategy or (strategy == "separable" and separate(weights) is None)
    # a block larger than the kernel, and one it reaches past (scipy's way there)
    for shape in [(37, 61), (4, 5)]:
        block = RNG.normal(size=shape).astype(dtype)
        tolerance = (1e-5 if dtype == F32 else 1e-12) * np.abs(weights).sum() * max(np.abs(block).max(), 2.5)
        for mode, cval in BORDERS:
            got = correlate_block(block, plan, edge_mode=mode, cval=cval)
            want = ndimage.correlate(block.astype(np.float64), weights, mode=mode, cval=cval, origin=list(origin))
            assert got.dtype == dtype and got.shape == shape
            np.testing.assert_allclose(got, want, rtol=0, atol=tolerance, err_msg=f"{plan.describe()} {shape} {mode} {cval}")


def test_a_slab_computes_only_the_slices_it_keeps() -> None:
    volume = RNG.normal(size=(14, 9, 21)).astype(np.float32)
    plan = _plan(GAUSS3D, F32)
    keep = (slice(4, 10), slice(None), slice(None))
    got = correlate_block(volume, plan, edge_mode="mirror", cval=0.0, keep=keep)
    want = ndimage.correlate(volume.astype(np.float64), plan.weights, mode="mirror")[keep]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(volume).max())


# --- byte-reproducible whatever the block ---------------------------------------------------------

# Values over 24 orders of magnitude: where running sums round (boxFilter's), the bytes would show it.
IMAGE = RNG.normal(size=(44, 230)) * 10.0 ** RNG.uniform(-12, 12, (44, 230))
WIDTHS = range(50, 141)
REPRODUCIBLE = [
    # (what, weights, dtype, strategy, engine)
    ("dense 3x3, filter2D", DENSE[5, 5][:3, :3], F32, "auto", "opencv"),  # edge's integer weights round alike
    ("dense 7x7, filter2D", DENSE[7, 7], F32, "auto", "opencv"),
    ("dense 5x5 float64, filter2D", DENSE[5, 5], F64, "auto", "opencv"),
    ("gaussian 15x15, sepFilter2D", GAUSS15, F32, "auto", "opencv"),
    ("gaussian 15x15 float64, sepFilter2D", GAUSS15, F64, "auto", "opencv"),
    ("box 31x31", BOX31, F32, "auto", "opencv"),
    ("box 5x5", build_kernel("box", {"size": 5}).weights, F32, "auto", "opencv"),
    ("box 5x5 float64", build_kernel("box", {"size": 5}).weights, F64, "auto", "opencv"),
    ("rank 2, two sepFilter2D passes", RANK[2, 9], F32, "auto", "opencv"),
    ("1-D 9", ROW[9], F32, "auto", "opencv"),
    ("direct 12x12 float32, not filter2D's DFT", DENSE[12, 12], F32, "direct", "opencv"),
    ("direct 8x8 float64, not filter2D's DFT", DENSE[8, 8], F64, "direct", "opencv"),
    ("scipy direct", EDGE, F32, "direct", "scipy"),
    ("scipy separable", GAUSS15, F32, "separable", "scipy"),
]


def _differing_blocks(plan, dtype, mode: str, cval: float) -> list[str]:
    """Blocks of the image (every width in WIDTHS, several heights, inside and at each edge) whose
    samples differ in a byte from the whole image's, where they read no border of the block's own."""
    image = IMAGE.astype(dtype)
    whole = correlate_block(image, plan, edge_mode=mode, cval=cval)
    (up, down), (left, right) = strategies._reach(plan)
    height, width = image.shape
    blocks = [(slice(0, height), slice(x0, x0 + w)) for w in WIDTHS for x0 in (37, *((0, width - w) if w % 5 == 0 else ()))]
    blocks += [(slice(y0, y0 + h), slice(11, 11 + w)) for h in (up + down + 1, 20, 31) for w in (64, 99) for y0 in (0, 5, height - h)]
    differing = []
    for rows, columns in blocks:
        got = correlate_block(np.ascontiguousarray(image[rows, columns]), plan, edge_mode=mode, cval=cval)
        # Wrap reads the block's own far side: only samples that read no border compare.
        edge = mode != "wrap"
        y0 = 0 if edge and rows.start == 0 else up
        y1 = got.shape[0] - (0 if edge and rows.stop == height else down)
        x0 = 0 if edge and columns.start == 0 else left
        x1 = got.shape[1] - (0 if edge and columns.stop == width else right)
        if not np.array_equal(got[y0:y1, x0:x1], whole[rows, columns][y0:y1, x0:x1]):
            differing.append(f"rows {rows.start}:{rows.stop} columns {columns.start}:{columns.stop}")
    return differing


@pytest.mark.parametrize("weights, dtype, strategy, engine", [r[1:] for r in REPRODUCIBLE], ids=[r[0] for r in REPRODUCIBLE])
def test_a_sample_has_the_same_bytes_in_any_block(weights, dtype, strategy: str, engine: str) -> None:
    plan = choose_strategy(weights, (0, 0), engine=engine, dtype=dtype, strategy=strategy)
    assert plan.reproducible and plan.strategy == (strategy if strategy != "auto" else plan.strategy)
    for mode, cval in BORDERS:
        differing = _differing_blocks(plan, dtype, mode, cval)
        assert not differing, f"{plan.describe()} {mode} {cval}: {len(differing)} blocks differ, e.g. {differing[:3]}"


@pytest.mark.parametrize("weights", [DENSE[5, 5][:3, :3], DENSE[7, 7]], ids=["dense 3x3", "dense 7x7"])
def test_without_the_tail_strip_opencvs_scalar_tail_shows(weights, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the strip is for: OpenCV's filter2D rounds the last columns of a row otherwise (without
    fused multiply-adds: integer weights like edge's would hide it), so a sample would depend on the
    width of its block. If this fails, this OpenCV build's tail rounds as its vectors do."""
    plan = choose_strategy(weights, (0, 0), engine="opencv", dtype=F32)
    monkeypatch.setattr(strategies, "refilter_tail", lambda *args: None)
    assert _differing_blocks(plan, F32, "reflect", 0.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_a_volume_sample_has_the_same_bytes_in_any_slab(dtype) -> None:
    """z passes are sums of whole rows over bands of y*x columns; y and x passes run on planes."""
    volume = (RNG.normal(size=(30, 7, 61)) * 10.0 ** RNG.uniform(-3, 3, (30, 7, 61))).astype(dtype)
    plan = _plan(GAUSS3D, dtype)
    whole = correlate_block(volume, plan, edge_mode="reflect", cval=0.0)
    reach = GAUSS3D.shape[0] // 2
    for z0, depth in [(0, 5), (3, 9), (20, 10), (0, 30)]:  # slabs read with a halo, their own slices kept
        low, high = max(0, z0 - reach), min(30, z0 + depth + reach)
        keep = (slice(z0 - low, z0 - low + depth), slice(None), slice(None))
        got = correlate_block(volume[low:high], plan, edge_mode="reflect", cval=0.0, keep=keep)
        assert np.array_equal(got, whole[z0 : z0 + depth]), (z0, depth)
    for width in range(20, 45):  # narrower planes: other bands of y*x columns and other rows
        got = correlate_block(np.ascontiguousarray(volume[..., 9 : 9 + width]), plan, edge_mode="reflect", cval=0.0)
        inside = slice(reach, width - reach)
        assert np.array_equal(got[..., inside], whole[..., 9 : 9 + width][..., inside]), width


@pytest.mark.parametrize("weights, dtype", [(DENSE[31, 31], F32), (DENSE[8, 8], F64), (EDGE, F32)], ids=["opencv", "float64", "scipy"])
def test_fft_agrees_to_a_few_ulp_and_says_it_is_not_reproducible(weights, dtype) -> None:
    plan = _plan(weights, dtype, strategy="fft")
    assert plan.strategy == "fft" and not plan.reproducible
    image = RNG.normal(size=(60, 200)).astype(dtype)
    whole = correlate_block(image, plan, edge_mode="reflect", cval=0.0)
    reach = weights.shape[1] // 2
    scale = np.abs(weights).sum() * np.abs(image).max() * np.finfo(dtype).eps
    for width in range(70, 130, 7):
        got = correlate_block(np.ascontiguousarray(image[:, 40 : 40 + width]), plan, edge_mode="reflect", cval=0.0)
        np.testing.assert_allclose(got[:, reach:-reach], whole[:, 40 + reach : 40 + width - reach], rtol=0, atol=16 * scale)


@pytest.mark.parametrize("weights", [DENSE[5, 5][:3, :3], GAUSS15], ids=["direct 3x3", "separable 15x15"])
def test_only_the_tail_of_a_row_is_copied(weights, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block of whole vectors (256 float32 = 16 of 64 bytes) is filtered in place; another one
    copies a strip of its last columns only, not the block."""
    import cv2

    copies: list[tuple[int, ...]] = []
    real = cv2.copyMakeBorder
    monkeypatch.setattr(cv2, "copyMakeBorder", lambda source, *args, **kw: copies.append(source.shape) or real(source, *args, **kw))
    plan = choose_strategy(weights, (0, 0), engine="opencv", dtype=F32)
    for width in (256, 270):
        correlate_block(RNG.normal(size=(64, width)).astype(np.float32), plan, edge_mode="reflect", cval=0.0)
    (strip,) = copies  # the 270-wide block's: 14 columns past whole vectors and the kernel's reach
    assert strip[0] == 64 and 14 < strip[1] <= 14 + weights.shape[1]


# --- the box (OpenCV's running sums), only where every block is one whole image ---------------

BOXES = {
    "mean 31x31": (np.full((31, 31), 1 / 961), (0, 0)),
    "mean 15x15": (np.full((15, 15), 1 / 225), (0, 0)),
    "ones 16x16, origin (-1, 0)": (np.ones((16, 16)), (-1, 0)),
    "-0.5 17x21": (np.full((17, 21), -0.5), (0, 0)),
}


@pytest.mark.parametrize("kernel", BOXES)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_a_large_box_on_whole_images_is_a_box_filter_and_scipys_correlate(kernel: str, dtype) -> None:
    weights, origin = BOXES[kernel]
    plan = choose_strategy(weights[np.newaxis], (0, *origin), engine="opencv", dtype=dtype, whole=True)
    assert plan.strategy == "box" and plan.describe() == "box (opencv)"
    block = RNG.normal(size=(2, 57, 83)).astype(dtype) * 100  # two whole images
    for mode, cval in [border for border in BORDERS if border[0] != "wrap"]:  # OpenCV has no wrap border
        got = correlate_block(block, plan, edge_mode=mode, cval=cval)
        want = ndimage.correlate(block.astype(np.float64), weights[np.newaxis], mode=mode, cval=cval, origin=[0, *origin])
        tolerance = (1e-5 if dtype == F32 else 1e-12) * np.abs(weights).sum() * np.abs(block).max()
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance, err_msg=f"{kernel} {mode} {cval}")


def test_the_box_filter_is_what_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    box = strategies.cv2.boxFilter
    monkeypatch.setattr(strategies.cv2, "boxFilter", lambda *args, **kwargs: calls.append(1) or box(*args, **kwargs))
    plan = choose_strategy(BOXES["mean 31x31"][0], (0, 0), engine="opencv", dtype=F32, whole=True)
    correlate_block(RNG.normal(size=(64, 64)).astype(F32), plan, edge_mode="reflect", cval=0.0)
    assert calls == [1]


def test_a_box_is_separable_where_blocks_are_cut_and_never_a_box_by_request() -> None:
    weights = BOXES["mean 31x31"][0]
    assert choose_strategy(weights, (0, 0), engine="opencv", dtype=F32).strategy == "separable"
    assert choose_strategy(weights, (0, 0), engine="scipy", dtype=F32, whole=True).strategy == "separable"
    for strategy in STRATEGIES:
        assert choose_strategy(weights, (0, 0), engine="opencv", dtype=F32, strategy=strategy, whole=True).strategy == strategy
    # small boxes stay on sepFilter2D, which is as fast there; a kernel that is not constant is no box
    assert choose_strategy(np.full((3, 3), 1 / 9), (0, 0), engine="opencv", dtype=F32, whole=True).strategy == "separable"
    gauss = np.outer(*[np.exp(-np.arange(-7, 8) ** 2 / 12.5)] * 2)
    assert choose_strategy(gauss, (0, 0), engine="opencv", dtype=F32, whole=True).strategy == "separable"
    # a 3-D box is filtered along z too: not one plane's box
    assert choose_strategy(np.full((5, 31, 31), 1.0), (0, 0, 0), engine="opencv", dtype=F32, whole=True).strategy != "box"


# --- raw integers: a volume's slab in the type its file stores ---------------------------------

RAW_KERNELS = {
    "gaussian 3-D": GAUSS3D,
    "box 5x5x5": np.full((5, 5, 5), 1 / 125),
    "box 2x4x3": np.full((2, 4, 3), 1 / 24),
    "z only": np.array([0.25, 0.5, 0.25]).reshape(3, 1, 1),
    "rank 2 in 3-D": np.multiply.outer(np.array([1.0, 2.0, 1.0]), _rank(2, 5)),
    "plane only": DENSE[5, 5][None],
    "dense 3x3x3": RNG.normal(size=(3, 3, 3)),
}


@pytest.mark.parametrize("mode, cval", BORDERS, ids=[f"{m} {c}" for m, c in BORDERS])
@pytest.mark.parametrize("name", list(RAW_KERNELS))
def test_raw_integers_give_the_bytes_of_converting_first(name: str, mode: str, cval: float) -> None:
    """Whatever path a kernel takes, a block of uint16 computed in float32 is the converted block's result."""
    weights = RAW_KERNELS[name]
    plan = _plan(weights, F32, edge_mode=mode)
    raw = RNG.integers(0, 65535, (11, 9, 37), endpoint=True).astype(np.uint16)
    keep = (slice(2, 9), slice(None), slice(None))
    got = correlate_block(raw, plan, edge_mode=mode, cval=cval, keep=keep, dtype=F32)
    want = correlate_block(raw.astype(np.float32), plan, edge_mode=mode, cval=cval, keep=keep)
    assert got.dtype == F32 and np.array_equal(got, want)


def test_raw_blocks_are_read_unconverted_only_by_separable_passes_along_z() -> None:
    from pipeline.steps.strategies import takes_raw

    def says(name: str, mode: str = "reflect", cval: float = 0.0) -> bool:
        return takes_raw(_plan(RAW_KERNELS[name], F32, edge_mode=mode), mode, cval, 3)

    assert says("gaussian 3-D") and says("box 5x5x5")
    assert says("box 5x5x5", "constant", 0.0) and not says("box 5x5x5", "constant", 2.5)  # cval is padded in first
    # planned direct (ndimage.correlate converts first), or not filtering z at all
    for name in ("box 2x4x3", "z only", "rank 2 in 3-D", "plane only", "dense 3x3x3"):
        assert _plan(RAW_KERNELS[name], F32).strategy == "direct" and not says(name), name
