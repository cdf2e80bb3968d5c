"""A PNG decoder of its own and the expected RGBA of a quicklook: an independent reference for the
quicklook tests (core, flows and the Prefect UI in a browser)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

# -- an independent PNG decoder (all five filter types) -------------------------------------------

def decode_png(data: bytes) -> np.ndarray:
    """(h, w, 4) uint8 RGBA of an 8-bit RGBA or RGB PNG; checks signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    w, h, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 4 if colour == 6 else 3
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), dtype=np.int32)
    prev = np.zeros(w * bpp, dtype=np.int32)
    for r in range(h):
        ftype, line = raw[r, 0], raw[r, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        for i in range(len(line)):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[r], prev = cur, cur
    img = out.astype(np.uint8).reshape(h, w, bpp)
    if bpp == 3:
        img = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)
    return img


def expected_rgba(values: np.ndarray, table: np.ndarray, clim: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest acceptable RGB (one LUT step either way for float32 vs float64 rounding)
    and the alpha of a north-up reference field."""
    t = np.clip((np.nan_to_num(values, nan=clim[0]) - clim[0]) / (clim[1] - clim[0]), 0, 1) * 255
    idx = np.rint(t).astype(int)
    near = np.stack([table[np.clip(idx + d, 0, 255)] for d in (-1, 0, 1)]).astype(int)
    alpha = np.where(np.isfinite(values), 255, 0).astype(np.uint8)
    return near, alpha


def assert_pixels(img: np.ndarray, north_up_ref: np.ndarray, table: np.ndarray, clim) -> None:
    near, alpha = expected_rgba(north_up_ref, table, clim)
    assert img.shape == north_up_ref.shape + (4,)
    np.testing.assert_array_equal(img[..., 3], alpha)
    shown = alpha == 255
    rgb = img[..., :3].astype(int)
    ok = np.any(np.all(near == rgb[None], axis=-1), axis=0)
    assert ok[shown].all(), f"{(~ok[shown]).sum()} pixels differ from the colormap of the reference"
    assert (img[~shown] == 0).all(), "transparent pixels are transparent black"
