#!/usr/bin/python3
"""Writes the image fixtures of the C++ tests (tests/fixtures/images) and, for each readable one,
the model input that preprocessing must produce, computed here independently with numpy.

    /usr/bin/python3 scripts/make_image_fixtures.py [--out tests/fixtures/images]

Expected inputs assume the tiny test bundles' spec: 32x32, stretch, ImageNet mean/std; they are
[3,32,32] float32 RGB .npy files under expected/. Images are made at 32x32 (no resampling) except
downscale_64.png, whose expected input is the exact 2x2 block mean (OpenCV's INTER_AREA computes
it in 8 bits, so the C++ test allows one grey level of difference).
"""
from __future__ import annotations

import argparse
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)
SIZE = 32


def pattern(h: int, w: int, channels: int, maximum: int, seed: int) -> np.ndarray:
    """A smooth, asymmetric test pattern (no symmetry, so flips and transposes show)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    planes = []
    for c in range(channels):
        base = (x * (c + 1) * 3 + y * (c + 2) * 5 + (x * y) % (7 + c)) % 97 / 96.0
        planes.append(np.clip(base + rng.uniform(-0.02, 0.02, size=(h, w)), 0, 1))
    return np.round(np.stack(planes, axis=-1) * maximum)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_raw(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> None:
    """A minimal PNG writer: PIL cannot write 16-bit RGB, and the bomb needs a header PIL won't make."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows, 9))
                     + png_chunk(b"IEND", b""))


def normalised(rgb01: np.ndarray) -> np.ndarray:
    """[H,W,3] RGB in [0,1] -> [3,H,W] float32 normalised."""
    return ((rgb01 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def over_mean(rgb01: np.ndarray, alpha01: np.ndarray) -> np.ndarray:
    return alpha01[..., None] * rgb01 + (1 - alpha01[..., None]) * MEAN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures/images")
    out = parser.parse_args().out
    (out / "expected").mkdir(parents=True, exist_ok=True)
    expected = {}

    rgb8 = pattern(SIZE, SIZE, 3, 255, 1).astype(np.uint8)
    Image.fromarray(rgb8).save(out / "rgb8.png")
    expected["rgb8.png"] = normalised(rgb8 / 255.0)
    Image.fromarray(rgb8).save(out / "rgb8.bmp")
    expected["rgb8.bmp"] = expected["rgb8.png"]
    Image.fromarray(rgb8).save(out / "rgb8.tiff")
    expected["rgb8.tiff"] = expected["rgb8.png"]
    Image.fromarray(rgb8).save(out / "rgb8.webp", lossless=True)
    expected["rgb8.webp"] = expected["rgb8.png"]
    Image.fromarray(rgb8).save(out / "rgb8.jpg", quality=95)
    # JPEG is lossy: the expectation is PIL's own decoding of the file (libjpeg-turbo, like OpenCV's).
    expected["rgb8.jpg"] = normalised(np.asarray(Image.open(out / "rgb8.jpg").convert("RGB")) / 255.0)

    gray8 = pattern(SIZE, SIZE, 1, 255, 2).astype(np.uint8)[..., 0]
    Image.fromarray(gray8, mode="L").save(out / "gray8.png")
    expected["gray8.png"] = normalised(np.repeat(gray8[..., None] / 255.0, 3, axis=-1))

    gray16 = pattern(SIZE, SIZE, 1, 65535, 3).astype(np.uint16)[..., 0]
    write_png_raw(out / "gray16.png", SIZE, SIZE, 16, 0,
                  b"".join(b"\x00" + row.astype(">u2").tobytes() for row in gray16))
    expected["gray16.png"] = normalised(np.repeat(gray16[..., None] / 65535.0, 3, axis=-1))

    rgb16 = pattern(SIZE, SIZE, 3, 65535, 4).astype(np.uint16)
    write_png_raw(out / "rgb16.png", SIZE, SIZE, 16, 2,
                  b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16))
    expected["rgb16.png"] = normalised(rgb16 / 65535.0)

    rgba = pattern(SIZE, SIZE, 4, 255, 5).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(out / "rgba.png")
    expected["rgba.png"] = normalised(over_mean(rgba[..., :3] / 255.0, rgba[..., 3] / 255.0))

    la = pattern(SIZE, SIZE, 2, 255, 6).astype(np.uint8)
    Image.fromarray(la, mode="LA").save(out / "gray_alpha.png")
    gray = np.repeat(la[..., :1] / 255.0, 3, axis=-1)
    expected["gray_alpha.png"] = normalised(over_mean(gray, la[..., 1] / 255.0))

    palette_image = Image.fromarray(rgb8).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    palette_image.save(out / "palette.png")
    expected["palette.png"] = normalised(np.asarray(palette_image.convert("RGB")) / 255.0)

    # A photo taken with the camera turned: stored 40 wide x 20 high, EXIF orientation 6 says
    # "rotate 90 degrees clockwise to display", so it must decode as 20 wide x 40 high with the
    # stored left column (red) at the top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :10] = (255, 0, 0)
    stored[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(out / "exif_rotate90.jpg", quality=95, exif=exif.tobytes())

    big = pattern(2 * SIZE, 2 * SIZE, 3, 255, 7).astype(np.uint8)
    Image.fromarray(big).save(out / "downscale_64.png")
    block_mean = big.reshape(SIZE, 2, SIZE, 2, 3).mean(axis=(1, 3))
    expected["downscale_64.png"] = normalised(block_mean / 255.0)

    # Odd file name: spaces and non-ASCII characters must pass through untouched.
    Image.fromarray(rgb8).save(out / "odd name ü.png")
    expected["odd name ü.png"] = expected["rgb8.png"]

    # Bad inputs.
    (out / "empty.png").write_bytes(b"")
    good_png = (out / "rgb8.png").read_bytes()
    (out / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="JPEG", quality=90)
    (out / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # Valid signature and header, then an IDAT whose compressed data is garbage.
    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    (out / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                                      + png_chunk(b"IDAT", bytes(range(256)) * 4) + png_chunk(b"IEND", b""))
    (out / "not_an_image.jpg").write_text("this is a text file with an image extension\n")
    # A decompression bomb: 30000 x 30000 1-bit pixels (900 megapixels) in about 110 kB.
    side = 30000
    row = b"\x00" + bytes((side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    (out / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
                                   + png_chunk(b"IEND", b""))

    for name, values in expected.items():
        np.save(out / "expected" / (name.rsplit(".", 1)[0] + "." + name.rsplit(".", 1)[1] + ".npy"), values)
    print(f"wrote {len(list(out.glob('*')))} files to {out}")


if __name__ == "__main__":
    main()
