"""Pillow and imageio are imported when a read first needs them, and set up before any decode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr
from scipy import ndimage

LAZY = ("PIL", "imageio", "natsort")


def _python(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_a_tiff_volume_job_never_imports_pillow_imageio_or_natsort(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).integers(0, 4000, (6, 20, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", volume)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: {tmp_path / 'v.tif'}, layout: volume}}\n"
        "steps: [{convolve: {kernel: box, params: {size: 3, ndim: 3}, boundary: reflect}}]\n"
        f"output: {{path: {tmp_path / 'o.zarr'}, dtype: float32}}\n"
    )
    probe = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print([name in sys.modules for name in {LAZY!r}]))\n"
        f"sys.argv = ['pipeline', 'run', {str(job)!r}, '-q']\n"
        "from pipeline.cli import main\n"
        "main()\n"
    )
    assert _python(probe)[-1] == str([False] * len(LAZY))
    written = zarr.open_array(tmp_path / "o.zarr" / "0")[0]
    expected = ndimage.uniform_filter(volume.astype(np.float64), size=3, mode="reflect")
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-3)


def test_pillows_own_size_limit_is_off_before_the_first_decode(tmp_path: Path) -> None:
    """input.max_pixels replaces Pillow's limit, whichever library decodes first."""
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.arange(12, dtype=np.uint8).reshape(3, 4))
    iio.imwrite(tmp_path / "b.gif", np.zeros((2, 3, 4), np.uint8))
    for read in ("decode(path)", "frame_count(path.replace('a.png', 'b.gif'))", "imageio()"):
        lines = _python(
            "from pipeline.sources.decode import decode\n"
            "from pipeline.sources.frames import frame_count\n"
            "from pipeline.sources.image_libraries import imageio\n"
            f"path = {str(tmp_path / 'a.png')!r}\n"
            f"{read}\n"
            "import PIL.Image\n"
            "print(PIL.Image.MAX_IMAGE_PIXELS)\n"
        )
        assert lines[-1] == "None", read
