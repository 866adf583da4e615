"""OME-NGFF 0.5 metadata for the stored result, so napari and ome-zarr-py read it as one image."""

from __future__ import annotations

from typing import Any, Sequence


def ome_metadata(dimension_names: Sequence[str], levels: int = 1) -> dict[str, Any]:
    """OME-NGFF 0.5 ``multiscales`` for the result at ``0``, ``1``, …: axes in NGFF's order.

    NGFF allows one non-space axis besides time: the image index is that custom axis
    ("index"), or the time axis when channels take the channel slot.
    """
    def axis(name: str) -> dict[str, str]:
        if name in ("z", "y", "x"):
            return {"name": name, "type": "space"}
        if name == "c":
            return {"name": name, "type": "channel"}
        return {"name": name, "type": "time" if "c" in dimension_names else "index"}

    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": "result",
                "axes": [axis(name) for name in dimension_names],
                "datasets": [
                    {
                        "path": str(level),
                        "coordinateTransformations": [
                            {
                                "type": "scale",
                                "scale": [1.0] * (len(dimension_names) - 2) + [float(2**level)] * 2,
                            }
                        ],
                    }
                    for level in range(levels)
                ],
            }
        ],
    }
