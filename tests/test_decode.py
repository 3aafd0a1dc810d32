"""Decoding: hashing, every PIL mode, EXIF, torchvision-exact geometry, bad files, masks, pool."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from failstore.errors import ConfigError
from failstore.ingest.decode import BadImage, Decoded, decode_one, hash_only, to_rgb
from failstore.ingest.decode_pool import DecodePool
from failstore.ingest.sources import SourceItem
from failstore.models.protocol import Preprocess

NEAREST4 = Preprocess(resize=4, crop=4, interpolation="nearest")
K4 = NEAREST4.key()


def item(path: Path | str, mask: Path | str | None = None) -> SourceItem:
    return SourceItem(str(path), "x", None, None, None if mask is None else str(mask))


def save(path: Path, im: Image.Image, **kw: Any) -> SourceItem:
    im.save(path, **kw)
    return item(path)


def pixel(d: Decoded) -> list[int]:
    assert d.error is None, d.error
    arr = d.arrays[K4]
    assert arr.dtype == np.uint8 and arr.shape == (4, 4, 3)
    return arr[0, 0].tolist()


def decode4(path: Path, im: Image.Image | None = None, **kw: Any) -> Decoded:
    if im is not None:
        im.save(path, **kw)
    return decode_one(item(path), [NEAREST4])


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that claims to be width x height (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- hashing, sizes


def test_image_id_is_sha256_of_the_file_bytes_and_hash_only_agrees(tmp_path: Path) -> None:
    it = save(tmp_path / "a.jpg", noise(53, 37), quality=90)
    digest = hashlib.sha256((tmp_path / "a.jpg").read_bytes()).hexdigest()
    d = decode_one(it, [Preprocess(32, 28)])
    h = hash_only(it)
    assert (d.image_id, d.width, d.height, d.error) == (digest, 53, 37, None)
    assert (h.image_id, h.width, h.height, h.error, h.arrays) == (digest, 53, 37, None, {})
    assert d.arrays[(32, 28, "bilinear")].shape == (28, 28, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path: Path, suffix: str) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left half ends on top
    it = save(tmp_path / f"o{suffix}", im, exif=exif.tobytes())
    p = Preprocess(20, 20, interpolation="nearest")
    d = decode_one(it, [p])
    assert (d.width, d.height) == (20, 40)
    assert (hash_only(it).width, hash_only(it).height) == (20, 40)
    arr = d.arrays[p.key()].astype(int)
    assert np.abs(arr[2, 10] - [255, 0, 0]).max() <= 20  # top: red (JPEG is lossy)
    assert np.abs(arr[17, 10] - [0, 0, 255]).max() <= 20  # bottom: blue


# --------------------------------------------------------------------------- modes


def test_mode_conversions_known_answers(tmp_path: Path) -> None:
    t = tmp_path
    assert pixel(decode4(t / "l.png", Image.new("L", (4, 4), 100))) == [100, 100, 100]
    assert pixel(decode4(t / "one.png", Image.new("1", (4, 4), 1))) == [255, 255, 255]
    assert pixel(decode4(t / "zero.png", Image.new("1", (4, 4), 0))) == [0, 0, 0]
    # 16-bit: scaled by the bit depth (25700 / 65535 * 255 = 100), not clipped to 255
    assert pixel(decode4(t / "i16.png", Image.new("I;16", (4, 4), 25700))) == [100] * 3
    assert pixel(decode4(t / "i16.tif", Image.new("I;16", (4, 4), 65535))) == [255] * 3
    # 32-bit signed TIFF: 2**31 - 1 is white, 2**30 is mid-grey
    assert pixel(decode4(t / "i32.tif", Image.new("I", (4, 4), 2**31 - 1))) == [255] * 3
    assert pixel(decode4(t / "i32b.tif", Image.new("I", (4, 4), 2**30))) == [128] * 3
    # float: [0, 1] is scaled by 255; [0, 255] is kept; anything else is min-max stretched
    assert pixel(decode4(t / "f1.tif", Image.new("F", (4, 4), 0.5))) == [128] * 3
    assert pixel(decode4(t / "f2.tif", Image.new("F", (4, 4), 200.0))) == [200] * 3
    f = Image.fromarray(np.array([[-1.0, 1.0]] * 2, dtype=np.float32).repeat(2, 1), "F")
    arr = decode4(t / "f3.tif", f).arrays[K4]
    assert arr[0, :, 0].tolist() == [0, 0, 255, 255]
    # CMYK (lossless TIFF): pure cyan ink is (0, 255, 255)
    assert pixel(decode4(t / "c.tif", Image.new("CMYK", (4, 4), (255, 0, 0, 0)))) == [0, 255, 255]
    assert pixel(decode4(t / "w.tif", Image.new("CMYK", (4, 4), (0, 0, 0, 0)))) == [255] * 3
    # alpha is composited on white
    assert pixel(decode4(t / "a0.png", Image.new("RGBA", (4, 4), (255, 0, 0, 0)))) == [255] * 3
    assert pixel(decode4(t / "a1.png", Image.new("RGBA", (4, 4), (0, 0, 0, 128)))) == [127] * 3
    assert pixel(decode4(t / "a2.png", Image.new("RGBA", (4, 4), (9, 8, 7, 255)))) == [9, 8, 7]
    assert pixel(decode4(t / "la.png", Image.new("LA", (4, 4), (50, 255)))) == [50, 50, 50]
    assert pixel(decode4(t / "la0.png", Image.new("LA", (4, 4), (50, 0)))) == [255, 255, 255]
    # palette: colours looked up; a transparent index becomes white
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert pixel(decode4(t / "p.png", p)) == [10, 20, 30]
    assert pixel(decode4(t / "pt.png", p, transparency=1)) == [255, 255, 255]
    assert pixel(decode4(t / "pt0.png", p, transparency=0)) == [10, 20, 30]
    assert pixel(decode4(t / "p.gif", p)) == [10, 20, 30]
    assert pixel(decode4(t / "rgb.bmp", Image.new("RGB", (4, 4), (1, 2, 3)))) == [1, 2, 3]
    webp = decode4(t / "rgb.webp", Image.new("RGB", (4, 4), (1, 2, 3)), lossless=True)
    assert pixel(webp) == [1, 2, 3]


def test_every_mode_gives_rgb_arrays_of_the_crop_size(tmp_path: Path) -> None:
    base = noise(23, 17)
    gray = np.asarray(base.convert("L"))
    images = {
        **{m: (base.convert(m), "PNG") for m in ["1", "L", "P", "RGB", "RGBA", "LA"]},
        "CMYK": (base.convert("CMYK"), "TIFF"),
        "YCbCr": (base.convert("YCbCr"), "TIFF"),
        "I": (Image.fromarray(gray.astype(np.int32)), "TIFF"),
        "I;16": (Image.fromarray(gray.astype(np.uint16)), "PNG"),
        "F": (Image.fromarray(gray.astype(np.float32)), "TIFF"),
    }
    p = [Preprocess(12, 10), Preprocess(12, 8), Preprocess(9, 9, interpolation="bicubic")]
    for mode, (im, fmt) in images.items():
        path = tmp_path / f"{mode.replace(';', '_')}.{fmt.lower()}"
        im.save(path, format=fmt)
        assert Image.open(path).mode == mode
        d = decode_one(item(path), p)
        assert d.error is None, (mode, d.error)
        assert (d.width, d.height) == (23, 17)
        assert sorted(d.arrays) == [(9, 9, "bicubic"), (12, 8, "bilinear"), (12, 10, "bilinear")]
        for (_, crop, _), arr in d.arrays.items():
            assert arr.shape == (crop, crop, 3) and arr.dtype == np.uint8, mode
        # two crops of one resize come from the same resized image
        small, big = d.arrays[(12, 8, "bilinear")], d.arrays[(12, 10, "bilinear")]
        np.testing.assert_array_equal(small, big[1:9, 1:9])


def test_preprocesses_sharing_a_key_share_one_array(tmp_path: Path) -> None:
    it = save(tmp_path / "a.png", noise(30, 20))
    a, b = Preprocess(16, 12, mean=(0.0, 0.0, 0.0)), Preprocess(16, 12)
    both = decode_one(it, [a, b, Preprocess(16, 12, interpolation="bicubic")])
    assert sorted(both.arrays) == [(16, 12, "bicubic"), (16, 12, "bilinear")]
    np.testing.assert_array_equal(both.arrays[a.key()], decode_one(it, [b]).arrays[b.key()])
    assert not np.array_equal(both.arrays[a.key()], both.arrays[(16, 12, "bicubic")])


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [(37, 53), (53, 37), (100, 100), (13, 301), (301, 13), (7, 9)])
@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(32, 28),
        Preprocess(17, 17, interpolation="bicubic"),
        Preprocess(20, 24, interpolation="nearest"),  # crop larger than the resize: zero pad
        Preprocess(256, 224),
        Preprocess(15, 12, interpolation="lanczos"),
    ],
)
def test_geometry_matches_torchvision(
    tmp_path: Path, size: tuple[int, int], pre: Preprocess
) -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    im = noise(*size, seed=size[0] * 1000 + size[1])
    it = save(tmp_path / "x.png", im)
    expected = tvf.center_crop(
        tvf.resize(im, pre.resize, interpolation=InterpolationMode(pre.interpolation)), pre.crop
    )
    got = decode_one(it, [pre]).arrays[pre.key()]
    np.testing.assert_array_equal(got, np.asarray(expected))


# The test oracle (tests/preprocess_oracle.py: plain PIL + numpy) against the pipeline.
#
# They share the resampling (PIL, same filter) but not all of the geometry: the oracle rounds the
# resized long side (round) where torchvision and the pipeline truncate (int), and it floors the
# crop offset where torchvision rounds half to even (and pads accordingly). So:
# - where the resized sizes agree (the usual case), the pipeline's crop is exactly the oracle's
#   resampled image cut at torchvision's offsets, and equals the oracle's own crop whenever the
#   offsets agree too (also after normalisation: to_batch vs the pipeline's normalise);
# - where the oracle's rounding gives one more pixel on the long side, the two resample at
#   different scales and their pixels legitimately differ; the test checks that this is the only
#   difference (the short side and every other case agree exactly).
ORACLE_SIZES = [
    (37, 53), (53, 37), (100, 100), (13, 301), (301, 13), (7, 9),
    (64, 48), (48, 64), (640, 480), (33, 32), (250, 200), (45, 30),
]  # fmt: skip
ORACLE_GEOMETRY = [(32, 28), (17, 17), (20, 24), (256, 224), (16, 16), (24, 24), (15, 12)]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_decode_matches_the_preprocess_oracle(tmp_path: Path, interpolation: str) -> None:
    """12 image sizes x 7 resize/crop settings (crops larger than the image included): the
    pipeline's arrays and normalised batches equal the oracle's exactly."""
    import torch
    from preprocess_oracle import geometry, to_batch

    from failstore.models.pixels import normalise

    cases = 0
    for w, h in ORACLE_SIZES:
        im = noise(w, h, seed=w * 1000 + h)
        pres = [Preprocess(r, c, interpolation=interpolation) for r, c in ORACLE_GEOMETRY]
        decoded = decode_one(save(tmp_path / f"{w}x{h}.png", im), pres)
        for pre in pres:
            got = decoded.arrays[pre.key()]
            case = (w, h, pre.resize, pre.crop)
            assert got.dtype == np.uint8 and got.shape == (pre.crop, pre.crop, 3), case
            np.testing.assert_array_equal(got, geometry(im, pre), err_msg=str(case))
            assert torch.equal(normalise(got[None], pre, "cpu"), to_batch([im], pre)), case
            cases += 1
    assert cases == len(ORACLE_SIZES) * len(ORACLE_GEOMETRY) == 84


def test_unknown_interpolation_is_a_config_error(tmp_path: Path) -> None:
    bad = Preprocess(8, 8, interpolation="cubic")
    msg = (
        "unknown interpolation 'cubic'; "
        "use one of nearest, bilinear, bicubic, lanczos, box, hamming"
    )
    with pytest.raises(ConfigError) as info:
        decode_one(item(tmp_path / "a.png"), [bad])
    assert str(info.value) == msg
    with pytest.raises(ConfigError):
        DecodePool([bad])


# --------------------------------------------------------------------------- bad files


def test_bad_files_become_one_line_errors(tmp_path: Path) -> None:
    jpg = tmp_path / "ok.jpg"
    noise(64, 48).save(jpg, quality=90)
    png = tmp_path / "ok.png"
    noise(64, 48).save(png)
    (tmp_path / "trunc.jpg").write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    (tmp_path / "trunc.png").write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    data = bytearray(png.read_bytes())
    data[100:600] = bytes(500)  # zeroed compressed pixel data, header intact
    (tmp_path / "garbage.png").write_bytes(bytes(data))
    (tmp_path / "bomb.png").write_bytes(png_header_only(10_000, 10_000))  # PIL warning
    (tmp_path / "bigbomb.png").write_bytes(png_header_only(20_000, 20_000))  # PIL error
    (tmp_path / "adir.jpg").mkdir()
    names = ["missing.jpg", "empty.jpg", "text.jpg", "adir.jpg", "bomb.png", "bigbomb.png"]
    errors = {n: decode_one(item(tmp_path / n), [NEAREST4]).error for n in names}
    assert errors == {
        "missing.jpg": "file not found",
        "empty.jpg": "file is empty (0 bytes)",
        "text.jpg": "cannot identify the image format (corrupt or not an image)",
        "adir.jpg": "not a file (it is a directory)",
        "bomb.png": "image has 100000000 pixels, more than the limit 89478485 "
        "(decompression bomb?)",
        "bigbomb.png": "image has 400000000 pixels, more than the limit 89478485 "
        "(decompression bomb?)",
    }
    trunc_jpg = decode_one(item(tmp_path / "trunc.jpg"), [NEAREST4])
    assert trunc_jpg.error is not None
    assert trunc_jpg.error.startswith("truncated or corrupt image data: image file is truncated")
    assert trunc_jpg.arrays == {}
    assert trunc_jpg.image_id == hashlib.sha256((tmp_path / "trunc.jpg").read_bytes()).hexdigest()
    trunc_png = decode_one(item(tmp_path / "trunc.png"), [NEAREST4]).error
    assert trunc_png is not None and trunc_png.startswith("truncated or corrupt image data: ")
    garbage = decode_one(item(tmp_path / "garbage.png"), [NEAREST4]).error
    assert garbage is not None and garbage.startswith("truncated or corrupt image data: ")
    # our own limit, and PIL's limit still applies when ours is higher
    assert decode_one(item(png), [NEAREST4], max_pixels=3000).error == (
        "image has 3072 pixels, more than the limit 3000 (decompression bomb?)"
    )
    assert hash_only(item(png), max_pixels=3000).error == (
        "image has 3072 pixels, more than the limit 3000 (decompression bomb?)"
    )
    assert (
        decode_one(item(tmp_path / "bomb.png"), [NEAREST4], max_pixels=10**9).error
        == (errors["bomb.png"])
    )
    assert hash_only(item(tmp_path / "bomb.png")).error == errors["bomb.png"]
    assert hash_only(item(tmp_path / "missing.jpg")).error == "file not found"
    assert decode_one(item(jpg), [NEAREST4]).error is None


def test_unconvertible_mode_and_hash_only_skips_pixels(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match=r"^unsupported image mode La$"):
        to_rgb(Image.new("La", (2, 2)))
    jpg = tmp_path / "ok.jpg"
    noise(64, 48).save(jpg)
    (tmp_path / "t.jpg").write_bytes(jpg.read_bytes()[:-300])
    h = hash_only(item(tmp_path / "t.jpg"))  # header only: truncation is found by decode_one
    assert (h.error, h.width, h.height) == (None, 64, 48)
    assert decode_one(item(tmp_path / "t.jpg"), [NEAREST4]).error is not None


def test_truncated_images_fail_even_if_someone_enabled_loading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jpg = tmp_path / "ok.jpg"
    noise(64, 48).save(jpg)
    (tmp_path / "t.jpg").write_bytes(jpg.read_bytes()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    err = decode_one(item(tmp_path / "t.jpg"), [NEAREST4]).error
    assert err is not None and err.startswith("truncated or corrupt image data")


def test_pil_bomb_warning_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    it = save(tmp_path / "a.png", noise(40, 40))  # 1600 > 1000: PIL only warns
    assert decode_one(it, [NEAREST4]).error == (
        "image has 1600 pixels, more than the limit 1000 (decompression bomb?)"
    )


# --------------------------------------------------------------------------- masks


def decode_mask(tmp_path: Path, mask: Image.Image | bytes | None, size: tuple[int, int] = (6, 4)):
    img = tmp_path / "img.png"
    noise(*size).save(img)
    m = tmp_path / "mask.png"
    if isinstance(mask, Image.Image):
        mask.save(m)
    elif isinstance(mask, bytes):
        m.write_bytes(mask)
    return decode_one(item(img, m), [NEAREST4]), m


def png_array(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.mode == "L"
    return np.asarray(im)


def test_masks_are_reencoded_as_png_mode_l(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    d, _ = decode_mask(tmp_path, Image.fromarray(values, "L"))
    assert d.error is None and d.mask_png is not None
    np.testing.assert_array_equal(png_array(d.mask_png), values)
    # palette masks keep their indices (class ids), not the palette colours
    p = Image.fromarray(np.array([[0, 1, 2, 3, 0, 1]] * 4, dtype=np.uint8), "P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    d, _ = decode_mask(tmp_path, p)
    np.testing.assert_array_equal(png_array(d.mask_png), np.array([[0, 1, 2, 3, 0, 1]] * 4))
    d, _ = decode_mask(tmp_path, Image.new("1", (6, 4), 1))
    assert png_array(d.mask_png).max() == 255 and png_array(d.mask_png).min() == 255
    d, _ = decode_mask(tmp_path, Image.new("RGB", (6, 4), (7, 7, 7)))
    assert png_array(d.mask_png).tolist() == [[7] * 6] * 4


def test_bad_masks(tmp_path: Path) -> None:
    d, m = decode_mask(tmp_path, None)
    assert (d.error, d.arrays, d.mask_png) == (f"mask {m}: file not found", {}, None)
    assert d.image_id is not None and (d.width, d.height) == (6, 4)
    d, m = decode_mask(tmp_path, b"garbage")
    assert d.error == f"mask {m}: cannot identify the image format (corrupt or not an image)"
    d, m = decode_mask(tmp_path, Image.new("L", (4, 6)))
    assert d.error == f"mask {m}: size 4x6 does not match the image size 6x4"
    d, m = decode_mask(tmp_path, Image.new("RGB", (6, 4), (1, 2, 3)))
    assert d.error == f"mask {m}: mode RGB with differing channels; save masks as mode L or P"
    d, m = decode_mask(tmp_path, Image.new("I;16", (6, 4), 300))
    assert (
        d.error == f"mask {m}: mode I;16 values do not fit in 0..255 integers; save as mode L or P"
    )


# --------------------------------------------------------------------------- pool


class Crasher(SourceItem):
    """Kills the worker process that unpickles it (simulates a segfault in a decoder)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        if multiprocessing.parent_process() is not None:
            os._exit(3)
        for k, v in state.items():
            object.__setattr__(self, k, v)


def corpus(tmp_path: Path, n: int = 21) -> list[SourceItem]:
    items = []
    for i in range(n):
        p = tmp_path / f"{i:02d}.png"
        if i % 7 == 3:
            p.write_bytes(b"broken")
        elif i % 7 != 5:  # i % 7 == 5: missing file
            noise(20 + i, 30 - i, seed=i).save(p)
        items.append(item(p))
    return items


def same(a: Decoded, b: Decoded) -> bool:
    return (
        (a.item, a.image_id, a.width, a.height, a.error, a.mask_png)
        == (b.item, b.image_id, b.width, b.height, b.error, b.mask_png)
        and a.arrays.keys() == b.arrays.keys()
        and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    )


def test_pool_with_workers_matches_inline_in_order(tmp_path: Path) -> None:
    items = corpus(tmp_path)
    pre = [Preprocess(16, 12), Preprocess(10, 10, interpolation="bicubic")]
    with DecodePool(pre, workers=0) as pool:
        inline = list(pool.imap(items))
    with DecodePool(pre, workers=2, chunk_size=3) as pool:
        parallel = list(pool.imap(iter(items)))  # a one-shot iterator is fine
    assert [d.item.uri for d in parallel] == [i.uri for i in items]
    assert all(same(a, b) for a, b in zip(inline, parallel, strict=True))
    assert sum(d.error is not None for d in parallel) == 6
    assert parallel[3].error == "cannot identify the image format (corrupt or not an image)"
    assert parallel[5].error == "file not found"


def test_a_dying_worker_costs_only_its_image(tmp_path: Path) -> None:
    items = corpus(tmp_path, 9)
    crash = Crasher(str(tmp_path / "00.png"), None, None, None, None)
    items.insert(4, crash)
    with DecodePool([NEAREST4], workers=2, chunk_size=2) as pool:
        out = list(pool.imap(items))
    assert [d.item.uri for d in out] == [i.uri for i in items]
    assert out[4].error == (
        "decode worker process died while decoding this image (BrokenProcessPool)"
    )
    expected = [decode_one(i, [NEAREST4]) for i in items]
    assert all(same(a, b) for k, (a, b) in enumerate(zip(out, expected, strict=True)) if k != 4)


def test_closing_an_abandoned_pool_does_not_hang(tmp_path: Path) -> None:
    items = corpus(tmp_path, 14) * 20
    start = time.monotonic()
    with DecodePool([NEAREST4], workers=2, chunk_size=2) as pool:
        gen = pool.imap(items)
        first = next(gen)
        processes = list(pool._executor._processes.values())  # type: ignore[union-attr]
        gen.close()
    assert first.item == items[0]
    assert pool._executor is None
    alive = [(p.pid, p.exitcode, p.name) for p in processes if p.is_alive()]
    assert not alive, alive
    assert time.monotonic() - start < 30


def test_workers_that_cannot_start_are_one_error_not_an_error_per_image(tmp_path: Path) -> None:
    """Under 'spawn', a program read from stdin cannot start workers (its __main__ cannot be
    re-imported). That must stop the ingest with one error, not record every image as bad."""
    import subprocess
    import sys

    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    script = (
        "from failstore.errors import IngestError\n"
        "from failstore.ingest.decode_pool import DecodePool\n"
        "from failstore.models.protocol import Preprocess\n"
        "from failstore.ingest.sources import SourceItem\n"
        f"item = SourceItem({str(tmp_path / 'a.png')!r}, None, None, None, None)\n"
        "pool = DecodePool([Preprocess(resize=4, crop=4)], workers=1, start_timeout=60)\n"
        "try:\n"
        "    print('decoded', list(pool.imap([item])))\n"
        "except IngestError as e:\n"
        "    print('ERROR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    line = [s for s in out.stdout.splitlines() if s.startswith(("ERROR", "decoded"))]
    assert len(line) == 1 and line[0].startswith(
        "ERROR the decode worker processes could not start (BrokenProcessPool: "
    ), out.stdout + out.stderr
    assert line[0].endswith(
        "; run with --workers 0 to decode in this process; under the 'spawn' start method a "
        "program read from standard input cannot run worker processes"
    )
