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
