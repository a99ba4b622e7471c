"""load_rgb: every colour mode to 8-bit RGB, and a named BadImageError for every broken file."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from latentbench.data import BadImageError, load_rgb


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 255, 200, 30, 10] + [0] * 762)
    return img


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("L", (5, 4), 77), (77, 77, 77)),
        (Image.new("LA", (5, 4), (90, 0)), (90, 90, 90)),
        (Image.new("RGBA", (5, 4), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped, not composited
        (Image.new("1", (5, 4), 1), (255, 255, 255)),
    ],
    ids=["L", "LA", "RGBA", "1"],
)
def test_modes_convert_to_rgb(img, expected):
    rgb = load_rgb(_png_bytes(img), "x.png")
    assert rgb.mode == "RGB" and rgb.size == (5, 4)
    assert rgb.getpixel((2, 2)) == expected


def test_palette_with_transparency_keeps_stored_colour():
    data = _png_bytes(_palette_with_transparency(), transparency=1)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 1
    assert load_rgb(data, "p.png").getpixel((0, 0)) == (200, 30, 10)


def test_cmyk_jpeg():
    data = _png_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = load_rgb(data, "c.jpg").getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_16bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    data = _png_bytes(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = np.asarray(load_rgb(data, "g16.png"))
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(arr[..., 0], arr[..., 2])


def _rgb16_png(values: np.ndarray) -> bytes:
    """A 16-bit RGB (or, given 4 channels, RGBA) PNG written by hand (PIL cannot write one): (H, W, C) uint16."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, c = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    colour_type = {3: 2, 4: 6}[c]  # PNG's RGB, RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb_png_keeps_the_high_byte_as_pil_torch_fidelity_and_adm_read_it():
    values = np.array([[[200, 383, 32896], [65535, 0, 65534]]], dtype=np.uint16)
    arr = np.asarray(load_rgb(_rgb16_png(values), "rgb16.png"))
    assert arr.tolist() == (values >> 8).tolist() == [[[0, 1, 128], [255, 0, 255]]]  # round(v / 257) would give 1 for 200


def test_a_16bit_rgb_file_of_0_to_255_values_is_reported_off_scale():
    """Pillow reads a 16-bit RGB(A) PNG or TIFF by each value's high byte, into mode "RGB": one holding 8-bit values
    read as black with no doubt reported (its mode looked 8-bit), so two folders of them measured PSNR inf, SSIM 1."""
    from latentbench.data.images import decode

    low = np.arange(48, dtype=np.uint16).reshape(4, 4, 3) * 5  # 0..235: 8-bit data in a 16-bit file
    decoded = decode(_rgb16_png(low), "low.png")
    assert decoded.mode == "RGB" and not np.asarray(decoded.image).any()  # read black, as torch-fidelity reads it
    assert decoded.off_scale == "16 bits per channel, every value in 0..255"
    opaque = np.concatenate([low, np.full((4, 4, 1), 65535, np.uint16)], axis=2)  # alpha is not a colour value
    assert decode(_rgb16_png(opaque), "low_rgba.png").off_scale == "16 bits per channel, every value in 0..255"
    assert decode(_rgb16_png(low * 257), "full.png").off_scale is None  # the same image on the 16-bit scale
    assert decode(_rgb16_png(opaque * 0 + 256), "dim.png").off_scale is None  # a high byte of 1: on the 16-bit scale
    eight_bit = _png_bytes(Image.fromarray(np.zeros((4, 4, 3), np.uint8)))
    assert decode(eight_bit, "black.png").off_scale is None  # black at 8 bits is black, not off-scale


def test_float_mode_is_clipped():
    img = Image.fromarray(np.array([[-5.0, 127.6, 300.0]], dtype=np.float32))
    assert np.asarray(load_rgb(_png_bytes(img, "TIFF"), "f.tif"))[0, :, 1].tolist() == [0, 128, 255]


def _truncated(fmt: str) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_truncated("JPEG"), "truncated"),
        (_truncated("PNG"), "truncated"),
        (b"this is a README, not a PNG\n", "not a recognised image"),
        (b"", "empty file"),
    ],
    ids=["truncated-jpeg", "truncated-png", "text", "zero-byte"],
)
def test_bad_bytes_raise_named_error(data, reason):
    with pytest.raises(BadImageError, match="on_bad_image skip") as info:
        load_rgb(data, "/data/broken.png")
    assert info.value.path == "/data/broken.png" and "/data/broken.png" in str(info.value)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_an_image_over_pillows_pixel_limit_says_what_to_do(monkeypatch):
    """Pillow's DecompressionBombError (over 2 x MAX_IMAGE_PIXELS): the file, its size and the fix (downscale it); Pillow's
    own words ended in 'could be decompression bomb DOS attack..' (two full stops, no fix)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 20x20 image is then over twice the limit
    with pytest.raises(BadImageError) as info:
        load_rgb(_png_bytes(Image.new("RGB", (20, 20))), "/data/huge.png")
    assert str(info.value).startswith(
        "cannot decode image /data/huge.png: Image size (400 pixels) exceeds limit of 200 pixels: Pillow refuses an image "
        "over twice PIL.Image.MAX_IMAGE_PIXELS as a possible decompression bomb; if it is a real image, downscale it")
    assert ".." not in str(info.value)


def test_an_image_between_once_and_twice_pillows_pixel_limit_is_read_with_one_warning_naming_it(monkeypatch):
    """Pillow reads such an image with a DecompressionBombWarning that names no file and no fix ('could be
    decompression bomb DOS attack.'): the suite's own warning stands in for it, naming the file and the fix."""
    import warnings

    import latentbench.data.images as images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 12x12 image (144 pixels) is then over it, not over twice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scanned = images.decode(_png_bytes(Image.new("RGB", (12, 12), (1, 2, 3))), "/data/large.png")
        decoded = images.decode(_png_bytes(Image.new("RGB", (10, 10))), "/data/at_the_limit.png")  # 100: not over it
        # a training or evaluation load: the scan warned once, loader workers would repeat it every read of every epoch
        rgb = load_rgb(_png_bytes(Image.new("RGB", (12, 12), (1, 2, 3))), "/data/large.png")
    assert scanned.image.size == rgb.size == (12, 12) and rgb.getpixel((5, 5)) == (1, 2, 3) and decoded.image.size == (10, 10)
    [warning] = caught
    assert warning.category is Image.DecompressionBombWarning  # what a filter of Pillow's warning names
    assert str(warning.message) == (
        "image /data/large.png (12x12, 144 pixels) is over PIL.Image.MAX_IMAGE_PIXELS (100), which Pillow warns of as a "
        "possible decompression bomb: it is read, but every read of an image this large costs memory and time; "
        "downscale it (the bench center-crops to the protocol's resolution anyway)")
    assert warning.filename == images.__file__  # the suite's: the CLI prints it as its one-line warning


def test_a_scan_warns_once_of_its_large_images_cached_or_not(tmp_path, monkeypatch):
    """The scan decodes on a thread pool: Pillow's warning is filtered out for the process, not per read (which would
    swap the process's warning filters from several threads at once); the scan counts the large images from their
    sizes in one warning, so a rescan the scan cache answers (nothing decoded) warns as the first did, and a training
    read (load_rgb) does not repeat it."""
    import warnings

    import latentbench.data.encoded as encoded
    from latentbench.data import build_dataset

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(encoded, "scan_threads", lambda: 3)
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "images"
    for i in range(6):
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12) if i % 2 else (8, 8), (i, 0, 0)).save(root / "a" / f"{i}.png")
        os.utime(root / "a" / f"{i}.png", ns=(1, 1))  # old enough for the cache's racy rule
    said = (f"imagefolder:{root} [train]: 3 image(s) over PIL.Image.MAX_IMAGE_PIXELS (100 pixels; e.g. "
            f"{root / 'a' / '1.png'}, 12x12), which Pillow warns of as possible decompression bombs: they are read, "
            "but every read of an image this large costs memory and time; downscale them (the bench center-crops to "
            "the protocol's resolution anyway)")
    decoded = []
    real = encoded._decode_one
    monkeypatch.setattr(encoded, "_decode_one", lambda files, index: decoded.append(index) or real(files, index))
    for scan in ("first", "cached"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = build_dataset(f"imagefolder:{root}", "train", 8)
            data[1]  # a training read of a large image
        assert len(data) == 6 and [str(w.message) for w in caught] == [said], scan
        assert caught[0].category is Image.DecompressionBombWarning
        assert len(decoded) == (6 if scan == "first" else 0), scan
        decoded.clear()


def test_missing_file_is_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="cannot read file"):
        load_rgb(tmp_path / "nope.png")


def test_a_broken_link_is_named_as_one(tmp_path):
    """A link whose target is gone is listed by `ls` (and by the folder scan), but read as "No such file or directory"
    of its own name, which did not say why."""
    (tmp_path / "x.png").symlink_to("moved/x.png")
    with pytest.raises(BadImageError, match=r"x\.png: a broken link: it points to moved/x\.png, which does not exist"):
        load_rgb(tmp_path / "x.png")


def test_decode_reports_the_mode_read_and_transparent_pixels(tmp_path):
    """What `metrics` warns of: the file's own mode, and alpha below 255 anywhere (an alpha band, or a palette's
    transparency key), dropped by the conversion to RGB."""
    from latentbench.data.images import decode

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    rgba[0, 0, 3] = 254
    Image.fromarray(rgba, "RGBA").save(tmp_path / "one.png")
    palette = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4), "L").convert("P")
    palette.save(tmp_path / "keyed.png", transparency=3)
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(tmp_path / "gray.png")
    got = {name: decode(tmp_path / f"{name}.png")[1:3] for name in ("opaque", "one", "keyed", "gray")}
    assert got == {"opaque": ("RGBA", False), "one": ("RGBA", True), "keyed": ("P", True), "gray": ("L", False)}
    assert decode(tmp_path / "one.png")[0].mode == "RGB"


def test_a_jpeg_with_further_pictures_in_it_is_one_frame_and_an_animation_is_several():
    """Pillow opens a JPEG with a Multi-Picture segment (a camera's preview, a phone's HDR gain map) as MPO with
    n_frames 2: its first picture is the photograph, so it is not an image of several frames (the scan had said
    'an animated GIF or a multi-page TIFF ... save the frame you mean')."""
    import io

    import latentbench.data.images as images

    photo, preview = Image.new("RGB", (16, 16), (200, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 200))
    mpo, gif = io.BytesIO(), io.BytesIO()
    photo.save(mpo, "MPO", save_all=True, append_images=[preview])
    photo.save(gif, "GIF", save_all=True, append_images=[preview.resize((16, 16))])
    with Image.open(io.BytesIO(mpo.getvalue())) as opened:
        assert opened.format == "MPO" and opened.n_frames == 2  # what Pillow reports
    decoded = images.decode(mpo.getvalue(), "photo.jpg")
    assert decoded.frames == 1 and decoded.image.size == (16, 16) and decoded.image.getpixel((3, 3))[0] > 150
    assert images.decode(gif.getvalue(), "walk.gif").frames == 2


def test_a_big_endian_16bit_tiff_is_read_scaled_like_any_16bit_image():
    """Pillow opens a big-endian ("MM") 16-bit grayscale TIFF as I;16B, whose getextrema() raises "image has wrong
    mode": the scale check turned every such file into an unreadable one."""
    from latentbench.data.images import decode

    values = np.array([[0, 257, 32896, 65535]], dtype=">u2")
    data = _png_bytes(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    decoded = decode(data, "g16be.tif")
    assert np.asarray(decoded.image)[0, :, 0].tolist() == [0, 1, 128, 255] and decoded.off_scale is None
    low = decode(_png_bytes(Image.fromarray(np.array([[0, 200]], dtype=">u2")), "TIFF"), "low.tif")
    assert low.off_scale == "every value in 0..255"  # 8-bit data in a 16-bit file, as for I;16


def test_transparency_is_told_by_alpha_modes_and_keys_not_by_a_band_named_a():
    """LAB's "A" band is a colour axis (it was read as alpha: every LAB image 'had transparent pixels'), and a
    16-bit grayscale PNG's transparency key marks pixels Pillow's I;16 -> RGBA conversion leaves opaque."""
    from latentbench.data.images import has_transparent_pixels

    assert not has_transparent_pixels(Image.new("RGB", (4, 4), (10, 200, 30)).convert("LAB"))
    gray16 = np.full((4, 4), 40000, np.uint16)
    gray16[0, 0] = 1000
    keyed = Image.open(io.BytesIO(_png_bytes(Image.fromarray(gray16), transparency=1000)))
    keyed.load()
    assert keyed.mode == "I;16" and has_transparent_pixels(keyed)
    unkeyed = Image.open(io.BytesIO(_png_bytes(Image.fromarray(gray16), transparency=7)))
    unkeyed.load()
    assert not has_transparent_pixels(unkeyed)  # a key no pixel has
