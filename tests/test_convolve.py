"""Convolution of dask arrays against independent oracles (scipy.ndimage, scipy.signal, numpy, loops).

``same`` is checked against ``scipy.ndimage.convolve``/``correlate`` on the whole array;
``valid``/``full`` against ``scipy.signal.convolve``/``correlate`` per image. Hypothesis draws the
image sizes, the data and irregular dask chunkings (down to 1-pixel chunks, smaller than the kernel).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, signal

from pipeline.errors import KernelError
from pipeline.steps.chain import convolve
from pipeline.steps.convolve import Convolution, bind_convolution
from pipeline.steps.kernels import BUILTINS, build_kernel

# Written out rather than imported, so a mode or boundary dropped from the package is noticed.
MODES = ("same", "valid", "full")
BOUNDARIES = ("reflect", "nearest", "mirror", "wrap", "constant")
STRATEGIES = ("auto", "direct", "separable", "fft")  # how blocks are computed: never what
CVAL = 2.5  # non-zero, so a boundary="constant" that ignored cval would show
TOL = dict(rtol=1e-10, atol=1e-10)

_FIXED = np.random.default_rng(20240611)
KERNELS = {name: build_kernel(name).weights for name in BUILTINS}
KERNELS.update({f"box-{n}": build_kernel("box", {"size": n}).weights for n in (2, 4, 5)})
KERNELS.update({f"gaussian-{s}": build_kernel("gaussian", {"sigma": s}).weights for s in (0.7, 2.0)})
# Even-sized and non-square, random (asymmetric) so a wrong flip or origin shift cannot hide.
KERNELS.update({f"random-{a}x{b}": _FIXED.normal(size=(a, b)) for a, b in [(2, 2), (4, 4), (2, 5), (6, 1)]})

FAST = settings(max_examples=12, deadline=None, database=None)
THOROUGH = settings(max_examples=30, deadline=None, database=None)


# --- strategies ---------------------------------------------------------------------------------


@st.composite
def chunks_for(draw, size: int) -> tuple[int, ...]:
    """Irregular chunk sizes along one axis of length ``size``: up to 3 random cut points."""
    cuts = draw(st.lists(st.integers(1, size - 1), max_size=3, unique=True)) if size > 1 else []
    edges = [0, *sorted(cuts), size]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


@st.composite
def images(draw, *, min_yx: tuple[int, int] = (1, 1), extra: int = 8, lead: tuple[int, ...] = ()) -> np.ndarray:
    """Random float64 images shaped (n_images, *lead, y, x) with y, x in [min, min + extra]."""
    n = draw(st.integers(1, 3))
    yx = tuple(draw(st.integers(lo, lo + extra)) for lo in min_yx)
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).normal(size=(n, *lead, *yx))


@st.composite
def chunked(draw, data: np.ndarray) -> da.Array:
    return da.from_array(data, chunks=tuple(draw(chunks_for(n)) for n in data.shape))


# --- oracles ------------------------------------------------------------------------------------


def as_ndim(kernel: np.ndarray, ndim: int) -> np.ndarray:
    """Leading unit axes: the kernel acts on the trailing axes only."""
    return kernel.reshape((1,) * (ndim - kernel.ndim) + kernel.shape)


def oracle_same(x: np.ndarray, kernel: np.ndarray, boundary: str, correlate: bool) -> np.ndarray:
    op = ndimage.correlate if correlate else ndimage.convolve
    return op(x, as_ndim(kernel, x.ndim), mode=boundary, cval=CVAL)


def oracle_signal(x: np.ndarray, kernel: np.ndarray, mode: str, correlate: bool) -> np.ndarray:
    """scipy.signal on each 2-D image of a (..., y, x) array."""
    op = signal.correlate if correlate else signal.convolve
    k2 = as_ndim(kernel, 2)
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.stack([op(img, k2, mode=mode, method="direct") for img in flat])
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


def oracle(x: np.ndarray, kernel: np.ndarray, mode: str, boundary: str, correlate: bool) -> np.ndarray:
    if mode == "same":
        return oracle_same(x, kernel, boundary, correlate)
    return oracle_signal(x, kernel, mode, correlate)


CASES = [(b, c) for b in BOUNDARIES for c in (False, True)]  # (boundary, correlate)


def draw_cases(data: st.DataObject, mode: str) -> list[tuple[str, bool]]:
    """Every case for `same`; valid/full ignore the boundary, so one drawn per example keeps runs short."""
    if mode == "same":
        return CASES
    return [(data.draw(st.sampled_from(BOUNDARIES)), c) for c in (False, True)]


def check_against_oracle(
    arr: da.Array, x: np.ndarray, kernel: np.ndarray, mode: str, cases=CASES, **kw
) -> None:
    """Compute the (boundary, correlate) cases in one dask call and compare each with the oracle."""
    lazy = [convolve(arr, kernel, mode=mode, boundary=b, cval=CVAL, correlate=c, **kw) for b, c in cases]
    for (b, c), got in zip(cases, dask.compute(*lazy, scheduler="sync")):
        want = oracle(x, kernel, mode, b, c)  # valid/full: the boundary must not matter
        label = f"mode={mode} boundary={b} correlate={c} {kw}"
        assert got.shape == want.shape, label
        np.testing.assert_allclose(got, want, **TOL, err_msg=label)


# --- every kernel x every mode x every boundary x correlate -------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", KERNELS)
@FAST
@given(data=st.data())
def test_matches_scipy(name: str, mode: str, data: st.DataObject) -> None:
    kernel = KERNELS[name]
    # valid needs the kernel to fit; the others also get images smaller than the kernel, but not
    # 8x smaller, where the ndimage oracle itself is wrong (see test_reflect_with_huge_kernel).
    min_yx = kernel.shape if mode == "valid" else tuple(m // 8 + 1 for m in kernel.shape)
    x = data.draw(images(min_yx=min_yx, extra=5 if mode == "valid" else 9))
    strategy = data.draw(st.sampled_from(STRATEGIES))
    check_against_oracle(data.draw(chunked(x)), x, kernel, mode, draw_cases(data, mode), strategy=strategy)


@THOROUGH
@given(data=st.data(), m=st.integers(1, 6))
def test_random_1d_kernel_filters_rows(data: st.DataObject, m: int) -> None:
    kernel = np.asarray(data.draw(st.lists(st.floats(-5, 5), min_size=m, max_size=m)))
    mode = data.draw(st.sampled_from(MODES))
    x = data.draw(images(min_yx=(1, m)))
    # as_ndim makes the oracle's kernel (1, 1, m): it filters the rows of every image.
    check_against_oracle(data.draw(chunked(x)), x, kernel, mode)


@pytest.mark.parametrize("mode", ["same", "full"])
def test_kernel_larger_than_image(mode: str) -> None:
    rng = np.random.default_rng(1)
    x, kernel = rng.normal(size=(2, 9, 11)), rng.normal(size=(15, 15))
    check_against_oracle(da.from_array(x, chunks=(1, 4, 3)), x, kernel, mode)


# scipy.ndimage.correlate with mode='reflect' reads uninitialised memory when the kernel is at
# least 8 times longer than an image axis (scipy 1.17.1); the direct strategy must not inherit it.
@pytest.mark.parametrize("strategy", ["direct", "separable", "fft", "auto"])
def test_reflect_with_huge_kernel(strategy: str) -> None:
    # Independent oracle: numpy's 'symmetric' padding is ndimage's 'reflect' (d c b a | a b c d).
    x = np.array([[[1.25, 2.5, 3.75], [5.0, 6.25, 7.5]]])  # one 2 x 3 image
    kernel = np.random.default_rng(5).normal(size=(17, 17))
    padded = np.pad(x, ((0, 0), (8, 8), (8, 8)), mode="symmetric")
    want = signal.convolve(padded, kernel[None], mode="valid", method="direct")
    got = convolve(da.from_array(x), kernel, boundary="reflect", strategy=strategy).compute()
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data())
def test_color_axis_is_never_convolved(mode: str, data: st.DataObject) -> None:
    kernel = KERNELS["random-2x5"]
    x = data.draw(images(min_yx=kernel.shape, extra=4, lead=(3,)))  # (n, c, y, x)
    arr = data.draw(chunked(x))
    cases = draw_cases(data, mode)
    lazy = [convolve(arr, kernel, mode=mode, boundary=b, cval=CVAL, correlate=c) for b, c in cases]
    for (b, c), got in zip(cases, dask.compute(*lazy, scheduler="sync")):
        for channel in range(x.shape[1]):
            want = oracle(x[:, channel], kernel, mode, b, c)
            np.testing.assert_allclose(got[:, channel], want, **TOL, err_msg=f"{mode} {b} {c} c={channel}")


# --- 1-D vectors against the seed's definition ---------------------------------------------------


def full_by_definition(f: list[float], g: list[float]) -> np.ndarray:
    """n + m - 1 values, C[i] = sum_k f[k] g[i - k] (terms whose index falls outside are 0)."""
    n, m = len(f), len(g)
    out = []
    for i in range(n + m - 1):
        total = 0.0
        for k in range(n):
            if 0 <= i - k < m:
                total += f[k] * g[i - k]
        out.append(total)
    return np.array(out)


def valid_by_definition(f: list[float], g: list[float]) -> np.ndarray:
    """n - m + 1 values: only the positions where all m products exist, C[i] = sum_j f[i - j] g[j]."""
    n, m = len(f), len(g)
    out = []
    for i in range(m - 1, n):
        total = 0.0
        for j in range(m):
            total += f[i - j] * g[j]
        out.append(total)
    return np.array(out)


vectors = st.lists(st.floats(-100, 100), min_size=1, max_size=12)


@THOROUGH
@given(f=vectors, g=vectors, chunk=st.integers(1, 3))
def test_1d_full_and_valid_follow_the_definition(f: list[float], g: list[float], chunk: int) -> None:
    arr = da.from_array(np.array(f), chunks=chunk)
    full = convolve(arr, np.array(g), mode="full", spatial_ndim=1).compute()
    assert full.shape == (len(f) + len(g) - 1,)
    np.testing.assert_allclose(full, full_by_definition(f, g), **TOL)
    np.testing.assert_allclose(full, np.convolve(f, g, mode="full"), **TOL)
    if len(g) <= len(f):
        valid = convolve(arr, np.array(g), mode="valid", spatial_ndim=1).compute()
        assert valid.shape == (len(f) - len(g) + 1,)
        np.testing.assert_allclose(valid, valid_by_definition(f, g), **TOL)
        np.testing.assert_allclose(valid, np.convolve(f, g, mode="valid"), **TOL)


def test_1d_docstring_example_by_hand() -> None:
    arr = da.from_array(np.array([1.0, 2.0, 3.0]), chunks=1)
    got = convolve(arr, np.array([1.0, 10.0]), mode="full", spatial_ndim=1).compute()
    np.testing.assert_array_equal(got, [1.0, 12.0, 23.0, 30.0])  # 1*1, 1*10+2*1, 2*10+3*1, 3*10


# --- 2-D explicit loops: which index convention is which ------------------------------------------


def full_2d_loop(image: np.ndarray, kernel: np.ndarray, index) -> np.ndarray:
    """C[i, j] = sum over (k, l) of image[k, l] * kernel[index(i, j, k, l)]; out-of-range terms are 0."""
    (M, N), (P, Q) = image.shape, kernel.shape
    out = np.zeros((M + P - 1, N + Q - 1))
    for i, j in np.ndindex(out.shape):
        for k, l in np.ndindex(image.shape):
            a, b = index(i, j, k, l, P, Q)
            if 0 <= a < P and 0 <= b < Q:
                out[i, j] += image[k, l] * kernel[a, b]
    return out


def true_convolution(i, j, k, l, P, Q):
    return i - k, j - l


def seed_formula(i, j, k, l, P, Q):
    # The seed writes C[i,j] = sum_k sum_l F[k,l] G[P+k-i-1, Q+l-j-1]. With a = i - k this is
    # G[P-1-a, Q-1-b]: the kernel rotated by 180 degrees. So the formula is true convolution only if
    # G is stored upside down (origin at its bottom-right corner, as when it is written on paper and
    # indexed from the last row); with G indexed like a numpy array it is the full *cross-correlation*,
    # scipy.signal.correlate2d(F, G, "full") == convolve2d(F, G[::-1, ::-1], "full").
    return P + k - i - 1, Q + l - j - 1


@pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 5), (4, 1)])
def test_2d_full_explicit_loops(kernel_shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    image, kernel = rng.normal(size=(5, 6)), rng.normal(size=kernel_shape)
    arr = da.from_array(image[None], chunks=(1, 2, 2))

    convolved = convolve(arr, kernel, mode="full").compute()[0]
    np.testing.assert_allclose(convolved, full_2d_loop(image, kernel, true_convolution), **TOL)
    np.testing.assert_allclose(convolved, signal.convolve2d(image, kernel, "full"), **TOL)

    correlated = convolve(arr, kernel, mode="full", correlate=True).compute()[0]
    np.testing.assert_allclose(correlated, full_2d_loop(image, kernel, seed_formula), **TOL)
    np.testing.assert_allclose(correlated, signal.convolve2d(image, kernel[::-1, ::-1], "full"), **TOL)
    # ...and the seed's formula agrees with convolve2d(F, G) itself once G is stored rotated.
    np.testing.assert_allclose(
        full_2d_loop(image, kernel[::-1, ::-1], seed_formula), signal.convolve2d(image, kernel, "full"), **TOL
    )


# --- properties and errors ----------------------------------------------------------------------


@THOROUGH
@given(data=st.data(), size=st.sampled_from([1, 3, 5]))
def test_identity_kernel_is_a_no_op(data: st.DataObject, size: int) -> None:
    x = data.draw(images())
    arr = data.draw(chunked(x))
    kernel = build_kernel("identity", {"size": size}).weights
    lazy = [convolve(arr, kernel, boundary=b, correlate=c) for b, c in CASES]
    for got in dask.compute(*lazy, scheduler="sync"):
        np.testing.assert_array_equal(got, x)  # exact: one product by 1, the rest by 0


@pytest.mark.parametrize(
    "dtype, value, cval, rtol",
    [(np.float64, 0.12573022109339327, CVAL, 1e-14), (np.float32, 0.01, 255.0, 1e-6)],
)
def test_constant_cval_leaves_interior_untouched(dtype, value, cval, rtol) -> None:
    # Far from the border cval plays no part: identity is exact, a 3x3 blur of a flat image is flat.
    x = np.full((1, 9, 9), value, dtype=dtype)
    for kernel in (np.ones((1, 1)), KERNELS["blur"]):
        got = convolve(da.from_array(x), kernel, boundary="constant", cval=cval).compute()
        np.testing.assert_allclose(got[0, 4, 4], value, rtol=rtol)


@THOROUGH
@given(data=st.data(), name=st.sampled_from(sorted(KERNELS)), mode=st.sampled_from(MODES))
def test_chunking_never_changes_the_result(data: st.DataObject, name: str, mode: str) -> None:
    kernel = KERNELS[name]
    x = data.draw(images(min_yx=kernel.shape, extra=5)).astype(data.draw(st.sampled_from([np.float32, np.float64])))
    boundary, correlate = data.draw(st.sampled_from(CASES))
    strategy = data.draw(st.sampled_from(STRATEGIES))
    options = dict(mode=mode, boundary=boundary, cval=CVAL, correlate=correlate, strategy=strategy)
    one, two = (convolve(data.draw(chunked(x)), kernel, **options) for _ in range(2))
    a, b = dask.compute(one, two, scheduler="sync")
    plan = bind_convolution(Convolution(kernel, **options), ndim=x.ndim, spatial_ndim=2, dtype=x.dtype).kernel
    if plan.reproducible:  # byte for byte: a sample is computed alike in any block
        np.testing.assert_array_equal(a, b, err_msg=plan.describe())
    else:  # an FFT's roundings follow its transform's size, which is the block's
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(a).max() if x.dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_wide_images_give_the_same_bytes_in_any_chunking(boundary: str, dtype) -> None:
    """Chunks of several widths (and their halos) are widths OpenCV finishes in a scalar loop."""
    x = np.random.default_rng(7).normal(size=(2, 40, 150)).astype(dtype)
    for name in ("random-4x4", "random-2x5", "gaussian-2.0", "box-4"):
        whole = convolve(da.from_array(x), KERNELS[name], boundary=boundary, cval=CVAL).compute(scheduler="sync")
        for chunks in [(1, 40, 64), (2, 13, 37), (1, 40, 23)]:
            got = convolve(da.from_array(x, chunks=chunks), KERNELS[name], boundary=boundary, cval=CVAL)
            differing = np.argwhere(got.compute(scheduler="sync") != whole)
            assert differing.size == 0, f"{name} chunks {chunks}: {len(differing)} differ, e.g. {differing[:3].tolist()}"


def test_valid_with_kernel_larger_than_image_is_refused() -> None:
    arr = da.zeros((2, 4, 10), chunks=2)
    with pytest.raises(KernelError, match="valid"):
        convolve(arr, np.ones((5, 3)), mode="valid")


def test_3d_kernel_on_2d_images_is_refused() -> None:
    with pytest.raises(KernelError, match="3 dimensions"):
        convolve(da.zeros((2, 8, 8), chunks=4), np.ones((3, 3, 3)), spatial_ndim=2)


@pytest.mark.parametrize("option", [{"mode": "wide"}, {"boundary": "periodic"}])
def test_unknown_mode_or_boundary_is_refused(option: dict) -> None:
    with pytest.raises(KernelError, match=repr(next(iter(option.values())))):
        convolve(da.zeros((1, 4, 4)), np.ones((3, 3)), **option)
