"""Chunk compression by name (``output.codec``), for Zarr v3 stores and the v2 stores of OME-NGFF 0.4."""

from __future__ import annotations

import zarr
from numcodecs import Blosc, Zstd
from numcodecs.abc import Codec as V2Codec
from zarr.codecs import BloscCodec, ZstdCodec

CODECS = {
    "blosc-lz4": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-zstd": lambda: [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "zstd": lambda: [ZstdCodec(level=3)],
    "none": lambda: None,
}
# The same compression for Zarr v2 stores (output.format: ome-0.4), from numcodecs.
V2_CODECS = {
    "blosc-lz4": lambda: [Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)],
    "blosc-zstd": lambda: [Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)],
    "zstd": lambda: [Zstd(level=3)],
    "none": lambda: None,
}


def describe_codec(array: zarr.Array) -> str:
    """``blosc(cname=lz4, clevel=5, shuffle=shuffle)``: what compresses an array's chunks."""
    codecs = array.compressors
    if not codecs:
        return "none"
    parts = []
    for codec in codecs:
        if isinstance(codec, V2Codec):  # Zarr v2
            config = codec.get_config()
            name = config.pop("id")
        else:
            name, config = codec.to_dict()["name"], codec.to_dict().get("configuration", {})
        detail = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in config.items() if k not in ("typesize", "blocksize"))
        parts.append(f"{name}({detail})")
    return " + ".join(parts)
