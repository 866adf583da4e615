"""Steps from validated config models, composed lazily, against scipy applied step by step."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, signal

from pipeline.config import ConvolveSpec, ConvolveStep, NormalizeStep, validate_config
from pipeline.errors import KernelError
from pipeline.steps.chain import apply_steps, build_steps
from pipeline.steps.kernels import build_kernel

TOL = dict(rtol=1e-10, atol=1e-10)


def steps_from(*raw_steps: dict[str, Any]):
    """Validate a job holding these steps (as a YAML file would) and build them for (n, y, x) images."""
    config = validate_config(
        {"input": {"paths": "unused/*.png"}, "steps": list(raw_steps), "output": {"path": "unused.zarr"}}
    )
    return build_steps(config.steps)


def conv(kernel: Any, **options: Any) -> dict[str, Any]:
    return {"convolve": {"kernel": kernel, **options}}


def scipy_step(x: np.ndarray, kernel: np.ndarray, mode: str = "same", boundary: str = "reflect",
               cval: float = 0.0, correlate: bool = False) -> np.ndarray:
    """The oracle for one convolve step on (n, y, x): ndimage for `same`, signal per image otherwise."""
    if mode == "same":
        op = ndimage.correlate if correlate else ndimage.convolve
        return op(x, kernel[None], mode=boundary, cval=cval)
    op = signal.correlate if correlate else signal.convolve
    return np.stack([op(img, kernel, mode=mode, method="direct") for img in x])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Read-only (n, y, x) data shared by every test, hypothesis examples included."""
    x = np.random.default_rng(8).normal(size=(3, 12, 13))
    x.flags.writeable = False
    return x


def test_two_convolutions_equal_scipy_applied_twice(images: np.ndarray) -> None:
    steps = steps_from(conv("gaussian", params={"sigma": 1.0}, boundary="mirror"), conv("sobel_x", mode="valid"))
    result, unit_range = apply_steps(da.from_array(images, chunks=(1, 5, 4)), steps)
    want = scipy_step(scipy_step(images, build_kernel("gaussian").weights, boundary="mirror"),
                      build_kernel("sobel_x").weights, mode="valid")
    assert result.shape == want.shape == (3, 10, 11) and not unit_range
    np.testing.assert_allclose(result.compute(), want, **TOL)


# Consecutive `same` steps may share one halo exchange; each must still see its own border rule
# applied to the previous step's output at the true image edge.
SAME_STEP = st.fixed_dictionaries({
    "kernel": st.sampled_from([[[1, 2], [3, -4]], [[0, 1, 0], [2, -1, 3], [1, 0, 0]], [[1, -2, 3, 0.5, 1]], "sharpen"]),
    "boundary": st.sampled_from(["reflect", "nearest", "mirror", "wrap", "constant"]),
    "cval": st.sampled_from([0.0, -1.5]),
    "correlate": st.booleans(),
    "mode": st.just("same"),
})


@settings(max_examples=25, deadline=None, database=None)
@given(options=st.lists(SAME_STEP, min_size=2, max_size=3), data=st.data())
def test_chained_same_steps_equal_scipy_in_sequence(images: np.ndarray, options: list[dict], data) -> None:
    chunks = tuple(data.draw(st.sampled_from([(n,), (1,) * n, (n // 2, n - n // 2), (2, n - 3, 1)])) for n in images.shape)
    result, _ = apply_steps(da.from_array(images, chunks=chunks), steps_from(*(conv(**o) for o in options)))
    want = images
    for o in options:
        want = scipy_step(want, build_kernel(o["kernel"]).weights, **{k: v for k, v in o.items() if k != "kernel"})
    np.testing.assert_allclose(result.compute(scheduler="sync"), want, **TOL)


def test_normalize_step_then_convolve(images: np.ndarray) -> None:
    steps = steps_from({"normalize": "max"}, conv([[1, 0, -1]], mode="full"))
    result, unit_range = apply_steps(da.from_array(images, chunks=(2, 6, 6)), steps)
    scaled = images / np.abs(images).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(result.compute(), scipy_step(scaled, np.array([[1.0, 0.0, -1.0]]), mode="full"), **TOL)
    assert not unit_range


def test_steps_built_from_models_directly(images: np.ndarray) -> None:
    configs = [ConvolveStep(convolve=ConvolveSpec(kernel="edge")), NormalizeStep(normalize="minmax")]
    result, unit_range = apply_steps(da.from_array(images, chunks=4), build_steps(configs))
    edges = scipy_step(images, build_kernel("edge").weights)
    low, high = edges.min(axis=(1, 2), keepdims=True), edges.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(result.compute(), (edges - low) / (high - low), **TOL)
    assert unit_range is True


def test_apply_steps_stays_lazy() -> None:
    loads: list[int] = []

    def load(index: int) -> np.ndarray:
        loads.append(index)
        return np.full((9, 10), float(index))

    source = da.stack([
        da.from_delayed(dask.delayed(load)(i), shape=(9, 10), dtype=np.float64, meta=np.empty((0, 0)))
        for i in range(3)
    ])
    steps = steps_from(conv("blur", boundary="nearest"), {"normalize": "max"}, conv("edge", mode="valid"))
    result, _ = apply_steps(source, steps)
    assert isinstance(result, da.Array) and result.shape == (3, 7, 8)
    assert loads == []  # building the graph decoded nothing
    np.testing.assert_allclose(result.compute(scheduler="sync"), 0.0, atol=1e-12)  # flat images have no edges
    assert sorted(loads) == [0, 1, 2]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ([], False),
        ([conv("edge")], False),
        ([{"normalize": "minmax"}], True),
        ([conv("edge"), {"normalize": "max"}], True),
        ([{"normalize": "minmax"}, conv("blur")], False),
    ],
)
def test_unit_range_only_when_the_last_step_normalises(raw: list, expected: bool) -> None:
    _, unit_range = apply_steps(da.zeros((2, 6, 6), chunks=3), steps_from(*raw))
    assert unit_range is expected


@pytest.mark.parametrize(
    "raw, prefix, fragment",
    [
        ([{"normalize": "max"}, conv([[[1.0]], [[2.0]]])], "steps.1 (convolve inline)", "3 dimensions"),
        ([conv("box", params={"size": 13}, mode="valid")], "steps.0 (convolve box)", "valid"),
        # the first valid step shrinks 12x13 to 8x9, too small for the second one's 9x9
        ([conv("box", params={"size": 5}, mode="valid"), conv("gaussian", params={"sigma": 1.0}, mode="valid")],
         "steps.1 (convolve gaussian)", "valid"),
        ([conv("blur"), conv([[[1.0]], [[2.0]]]), conv("edge")], "steps.1 (convolve inline)", "3 dimensions"),
    ],
)
def test_kernel_errors_name_the_step(images: np.ndarray, raw: list, prefix: str, fragment: str) -> None:
    steps = steps_from(*raw)
    with pytest.raises(KernelError) as info:
        apply_steps(da.from_array(images, chunks=4), steps)
    assert str(info.value).startswith(prefix + ": ")
    assert fragment in str(info.value)


# --- activations and pools in the chain ---------------------------------------------------------


def _pooled(x: np.ndarray, size: int, stride: int, how=np.max) -> np.ndarray:
    """Explicit windows on the last two axes (valid padding)."""
    oy, ox = (x.shape[-2] - size) // stride + 1, (x.shape[-1] - size) // stride + 1
    out = np.empty((*x.shape[:-2], oy, ox))
    for i in range(oy):
        for j in range(ox):
            out[..., i, j] = how(x[..., i * stride : i * stride + size, j * stride : j * stride + size], axis=(-2, -1))
    return out


@settings(max_examples=20, deadline=None, database=None)
@given(data=st.data(), size=st.sampled_from([2, 3]), stride=st.sampled_from([None, 1, 2, 3]))
def test_convolve_relu_pool_equals_numpy_for_any_chunking(images: np.ndarray, data, size: int, stride) -> None:
    chunks = tuple(data.draw(st.sampled_from([(n,), (n // 2, n - n // 2), (2, n - 3, 1), (1,) * n])) for n in images.shape)
    pool = {"function": "max", "size": size, **({"stride": stride} if stride else {})}
    steps = steps_from(conv("sharpen", boundary="mirror"), {"activation": "relu"}, {"pool": pool})
    result, _ = apply_steps(da.from_array(images, chunks=chunks), steps)
    sharpened = np.maximum(scipy_step(images, build_kernel("sharpen").weights, boundary="mirror"), 0)
    want = _pooled(sharpened, size, stride or size)
    assert result.shape == want.shape
    np.testing.assert_allclose(result.compute(scheduler="sync"), want, **TOL)


def test_activations_fuse_into_the_convolutions_pass(images: np.ndarray) -> None:
    from pipeline.steps.chain import chain

    steps = steps_from(conv("blur"), {"activation": {"function": "leaky_relu", "slope": 0.2}}, conv("edge"),
                       {"activation": "tanh"}, {"pool": {"function": "mean", "size": 2}})
    chained = chain(da.from_array(images, chunks=(1, 6, 7)), steps)
    assert [stage.steps for stage in chained.stages] == [(0, 1, 2, 3), (4,)]  # one overlapped pass, then the pool
    assert chained.stages[0].halo == (0, 2, 2)
    blurred = scipy_step(images, build_kernel("blur").weights)
    leaky = np.where(blurred >= 0, blurred, 0.2 * blurred)
    want = _pooled(np.tanh(scipy_step(leaky, build_kernel("edge").weights)), 2, 2, np.mean)
    np.testing.assert_allclose(chained.array.compute(scheduler="sync"), want, **TOL)


def test_the_range_follows_activations_and_pools() -> None:
    from pipeline.steps.chain import output_range

    steps = steps_from(conv("edge"), {"activation": "relu"}, {"pool": {"function": "l2", "size": 2}},
                       {"activation": {"function": "clip", "max": 100.0}})
    assert output_range(steps[:2], (0.0, 255.0)) == (0.0, 2040.0)
    assert output_range(steps[:3], (0.0, 255.0)) == (0.0, 4080.0)
    assert output_range(steps, (0.0, 255.0)) == (0.0, 100.0)


def test_a_pool_larger_than_the_image_names_the_step(images: np.ndarray) -> None:
    with pytest.raises(KernelError, match=r"steps.1 \(max pool 20x20\): pool size \[20, 20\] is larger than the image \[12, 13\]"):
        apply_steps(da.from_array(images, chunks=4), steps_from(conv("blur"), {"pool": {"size": 20}}))


# --- a layer, activations and a pool in one pass, band by band -------------------------------------

BANK = np.random.default_rng(12).standard_normal((4, 3, 5, 3))  # K=4, C=3, an odd 5x3 window
BANK_BIAS = np.random.default_rng(13).standard_normal(4)
ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "clip": lambda x: np.clip(x, -0.5, 1.0)}


def _colour(shape: tuple[int, ...]) -> np.ndarray:
    """(n, 3, y, x) float32 with a block of zeros (no -0.0 may come out of it) and odd sizes."""
    x = np.random.default_rng(14).normal(size=shape).astype(np.float32)
    x[:, :, : shape[2] // 3, : shape[3] // 2] = 0
    return x


def _layer_oracle(x: np.ndarray, mode: str, boundary: str) -> np.ndarray:
    """Σ_c scipy correlate(x_c, w[k, c]) + b_k."""
    if mode == "same":
        correlate = lambda image, kernel: ndimage.correlate(image, kernel, mode=boundary)  # noqa: E731
    else:
        correlate = lambda image, kernel: signal.correlate(image, kernel, mode=mode, method="direct")  # noqa: E731
    x = x.astype(np.float64)
    return np.asarray([[sum(correlate(image[c], BANK[k, c]) for c in range(3)) + BANK_BIAS[k] for k in range(4)] for image in x])


def _pool_oracle(x: np.ndarray, function: str, size: int, stride: int, padding: str) -> np.ndarray:
    """skimage's block_reduce for windows that tile the image; explicit windows for strides of their own."""
    from skimage.measure import block_reduce

    how = {"max": np.max, "min": np.min, "mean": np.mean}[function]
    if stride != size:
        return _pooled(x, size, stride, how)
    if padding == "valid":
        x = x[..., : x.shape[-2] // size * size, : x.shape[-1] // size * size]
        return block_reduce(x, (1, 1, size, size), how)
    ragged = {"max": (np.max, -np.inf), "min": (np.min, np.inf), "mean": (np.nanmean, np.nan)}[function]
    return block_reduce(x, (1, 1, size, size), ragged[0], cval=ragged[1])


def _unfused(steps, x: np.ndarray) -> np.ndarray:
    """The steps' block functions one after the other on the whole block: every map held whole."""
    from pipeline.steps.chain import default_image

    image = default_image(da.from_array(x), 2)
    for step in steps:
        x, image = step.block(x, image), step.output(image)
    return x


@settings(max_examples=25, deadline=None, database=None)
@given(data=st.data(), mode=st.sampled_from(["same", "same", "valid", "full"]),
       boundary=st.sampled_from(["reflect", "nearest", "mirror", "wrap", "constant"]),
       activation=st.sampled_from(sorted(ACTIVATIONS)), function=st.sampled_from(["max", "mean", "min"]),
       size_stride=st.sampled_from([(2, 2), (3, 3), (2, 3), (1, 2)]), padding=st.sampled_from(["valid", "same"]),
       band_rows=st.sampled_from([1, 3, 7, 1000]), layer_stride=st.sampled_from([1, 1, 2]))
def test_a_layer_activation_and_pool_band_by_band_equal_scipy_then_skimage(
    data, mode: str, boundary: str, activation: str, function: str, size_stride, padding: str, band_rows: int,
    layer_stride: int,
) -> None:
    from pipeline.steps import bank
    from pipeline.steps.chain import chain

    size, stride = size_stride
    if size != stride:
        padding = "valid"
    x = _colour((2, 3, 23, 19))
    on_grid = (x.shape[2],) if stride == 1 else data.draw(st.sampled_from([(x.shape[2],), (stride * 4, x.shape[2] - stride * 4)]))
    chunks = (1, 3, on_grid, data.draw(st.sampled_from([(x.shape[3],), (stride * 3, x.shape[3] - stride * 3)])))
    act = {"function": "clip", "min": -0.5, "max": 1.0} if activation == "clip" else activation
    steps = steps_from({"layer": {"weights": BANK.tolist(), "bias": BANK_BIAS.tolist(), "mode": mode, "boundary": boundary,
                                  "stride": layer_stride}},
                       {"activation": act}, {"pool": {"function": function, "size": size, "stride": stride, "padding": padding}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bank, "GEMM_BAND_PIXELS", band_rows * (bank.GEMM_TILE + 16))  # bands of a few rows
        chained = chain(da.from_array(x, chunks=chunks), steps)
        if mode == "same" and layer_stride == 1:  # the pool joins the layer's pass
            assert [stage.steps for stage in chained.stages] == [(0, 1, 2)]
        got = chained.array.compute(scheduler="sync")
        # the same bytes as the unfused steps, which hold the layer's K maps whole (one chunk per image)
        whole = chain(da.from_array(x, chunks=(1, 3, *x.shape[2:])), steps).array.compute(scheduler="sync")
        assert whole.tobytes() == _unfused(steps, x).tobytes()
    layered = _layer_oracle(x, mode, boundary)[..., ::layer_stride, ::layer_stride]  # PyTorch's stride
    want = _pool_oracle(ACTIVATIONS[activation](layered), function, size, stride, padding)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("function", ["max", "mean"])
def test_tiles_of_a_banded_pass_give_the_whole_images_bytes(monkeypatch, function: str) -> None:
    from pipeline.steps import bank
    from pipeline.steps.chain import chain

    monkeypatch.setattr(bank, "GEMM_BAND_PIXELS", 3 * (bank.GEMM_TILE + 16))
    x = _colour((1, 3, 41, 300))  # wider than one BLAS call: tiles line their calls up with the image
    steps = steps_from({"layer": {"weights": BANK.tolist(), "bias": BANK_BIAS.tolist()}}, {"activation": "relu"},
                       {"pool": {"function": function, "size": 2}})
    whole = chain(da.from_array(x, chunks=-1), steps)
    assert [stage.steps for stage in whole.stages] == [(0, 1, 2)]
    want = whole.array.compute(scheduler="sync")
    for chunks in ((1, 3, (10, 31), (100, 200)), (1, 3, (6, 6, 29), (64, 236)), (1, 3, (2,) * 20 + (1,), 300)):
        tiled = chain(da.from_array(x, chunks=chunks), steps)
        assert [stage.steps for stage in tiled.stages] == [(0, 1, 2)], chunks
        assert tiled.array.compute(scheduler="sync").tobytes() == want.tobytes(), chunks


def test_a_pool_off_its_grid_or_with_overlapping_windows_keeps_a_pass_of_its_own() -> None:
    from pipeline.steps.chain import chain

    x = _colour((1, 3, 12, 12))
    layer_ = {"layer": {"weights": BANK.tolist()}}
    for chunks, pool in (((1, 3, (5, 7), 12), {"size": 2}), ((1, 3, 12, 12), {"size": 3, "stride": 2})):
        chained = chain(da.from_array(x, chunks=chunks), steps_from(layer_, {"activation": "relu"}, {"pool": pool}))
        assert [stage.steps for stage in chained.stages] == [(0, 1), (2,)]
