"""Decoding image files to 8-bit RGB, whatever their colour mode, and naming the ones that fail.

Colour conventions (the ADM / torch-fidelity ones, so that reference statistics match):

- RGB is kept as is; L, LA, P (with or without transparency), RGBA, CMYK, 1 (bilevel) and
  the other 8-bit modes go through PIL's ``convert("RGB")``. Alpha is dropped, not
  composited: a transparent pixel shows the colour stored under it.
- 16-bit integer modes (I;16, I;16B, I;16L and I, which is how PIL opens some 16-bit files)
  are scaled to 8 bit by ``round(value / 257)``, so 65535 -> 255 and 32896 -> 128. PIL's own
  ``convert`` clips those values at 255 instead, which turns most of the image white.
- 16-bit RGB and RGBA PNGs (and TIFFs) are opened by PIL as 8-bit RGB keeping each value's high byte
  (``value >> 8``) and are left so: torch-fidelity and ADM read them through PIL the same way.
  That can differ by one level from the grayscale rounding above (200 -> 0, not 1). A 16-bit
  grayscale + alpha PNG opens as such an RGBA (gray in R, G and B) and is reported as mode ``LA;16B``.
- F (32-bit float) is taken to already be on the 0..255 scale: rounded and clipped.
  A float image with every value in [0, 1], or a 16/32-bit one with every value in 0..255,
  was most likely saved on another scale and reads as nearly black (a 16-bit RGB one as black:
  every high byte is 0); ``decode`` says so (``off_scale``) and ``latentbench metrics`` warns of it.
- EXIF orientation is not applied (ADM and torch-fidelity do not apply it either; Hugging Face
  ``datasets`` does): ``decode`` reports the tag and ``latentbench metrics`` warns of it.

Truncated and corrupt files raise :class:`BadImageError`. ``ImageFile.LOAD_TRUNCATED_IMAGES``
is left alone: a half-decoded JPEG padded with grey is not a benchmark image.

Pillow's decompression-bomb guard is kept: an image of over twice ``PIL.Image.MAX_IMAGE_PIXELS`` raises
BadImageError, and one between once and twice the limit is read with a warning that names the file and the
fix. Pillow's own ``DecompressionBombWarning`` names neither, so it is filtered out, for the whole process (a
``warnings.catch_warnings`` around each read would swap the process's filters from the scan's threads, which it
is not safe to do) and only for its exact words: other Pillow warnings are left alone.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
PILLOW_BOMB_WARNING = r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels, could be decompression bomb"
T = TypeVar("T")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


SKIP_ADVICE = ("Fix or remove the file, or pass --on_bad_image skip (on_bad_image='skip') to drop unreadable files; "
               "they are then counted and listed in the dataset info.")


class BadImageError(ValueError):
    """An image file that cannot be decoded; names the file, the reason and what to do.

    ``advice`` defaults to the datasets' (fix, remove or skip); a command without a skip policy
    (``latentbench metrics``, ``stats``) passes its own.
    """

    def __init__(self, path: str, reason: str, advice: str = SKIP_ADVICE):
        self.path = str(path)
        self.reason = reason
        self.advice = advice
        super().__init__(f"cannot decode image {self.path}: {reason.rstrip('.')}. {advice}")

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.advice)


MAX_NAMED = 10  # unreadable files one error names one by one


def combine_bad_images(errors: list[BadImageError]) -> BadImageError:
    """One BadImageError for several unreadable files: the first as it is, then the others by name (MAX_NAMED in all),
    so a folder with several broken files takes one fix, not one rerun per file."""
    errors = [one for e in errors for one in getattr(e, "errors", [e])]  # combined ones count by their files
    if len(errors) == 1:
        return errors[0]
    first, rest = errors[0], errors[1:]
    named = "; ".join(f"{e.path} ({e.reason})" for e in rest[:MAX_NAMED - 1])
    more = f"; and {len(rest) - MAX_NAMED + 1} more" if len(rest) >= MAX_NAMED else ""
    combined = BadImageError(first.path, f"{first.reason}. {len(errors)} files are unreadable in all; the others: "
                                         f"{named}{more}", first.advice)
    combined.errors = errors
    return combined


def is_image_file(path: str | Path) -> bool:
    """Whether the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Fully decode an image file (a path, or its bytes) into an 8-bit RGB PIL image.

    Args:
        source: path of the file, or the file's bytes.
        name: how to call the file in error messages (defaults to the path).

    Returns:
        A loaded ``PIL.Image.Image`` in mode "RGB" (see the module docstring for conversions).

    Raises:
        BadImageError: the file is empty, not an image, truncated or otherwise undecodable.
    """
    # not ``decode``: a training sample needs the pixels, not the scan's facts; nor its warning of a large image, which
    # the scan gave once (a training's loader workers would repeat it for every read of every epoch)
    return _opened(source, name, lambda img, _: to_rgb(img), warn_large=False)


class Decoded(NamedTuple):
    """What ``decode`` read: the RGB image and what its conversion left out or assumed."""

    image: Image.Image
    mode: str  # the file's own PIL mode
    transparent: bool  # it had transparent pixels, whose alpha was dropped
    off_scale: str | None  # ``off_scale``'s doubt about the scale it was read on
    orientation: int  # its EXIF orientation (1: as stored, also without the tag), not applied
    frames: int = 1  # frames in the file (an animated GIF, a multi-page TIFF): only the first is read


def decode(source: str | Path | bytes, name: str | None = None, warn_large: bool = True) -> Decoded:
    """``load_rgb`` plus what the conversion did (``Decoded``). Raises BadImageError as ``load_rgb``.

    ``warn_large``: warn of an image over ``PIL.Image.MAX_IMAGE_PIXELS`` here (``latentbench metrics``); a dataset's
    scan warns once for all its files instead, cached ones included (``warn_of_large_images``)."""
    def read(img: Image.Image, stored: str) -> Decoded:
        return Decoded(to_rgb(img), file_mode(img, stored), has_transparent_pixels(img), off_scale(img, stored),
                       exif_orientation(img), frames(img))

    return _opened(source, name, read, warn_large)


def file_mode(img: Image.Image, stored: str) -> str:
    """The file's own colour mode: PIL's ``mode``, except where Pillow opens a file as another mode. A 16-bit
    grayscale + alpha PNG opens as RGBA (8 bits, its gray in R, G and B) and is named by its raw mode ``stored``
    (``LA;16B``), so that it counts as grayscale (``latentbench metrics`` warns when gray is set against colour)."""
    return stored if img.mode == "RGBA" and stored.startswith("LA;16") else img.mode


def frames(img: Image.Image) -> int:
    """The frames of an animation or pages of a document whose first is read: 1 for a still image, and for a JPEG with
    further pictures in it (Pillow's MPO: a camera's preview, a phone's HDR gain map), whose first is the photograph."""
    return 1 if img.format == "MPO" else getattr(img, "n_frames", 1)


def _opened(source: str | Path | bytes, name: str | None, read: Callable[[Image.Image, str], T],
            warn_large: bool = True) -> T:
    """``read`` of the file's loaded PIL image and its ``stored_rawmode``; BadImageError (as ``load_rgb``) for an empty
    or undecodable one, and with ``warn_large`` the warning of an image over ``PIL.Image.MAX_IMAGE_PIXELS``
    (``_warn_if_large``)."""
    name = str(source) if name is None else name
    data = source if isinstance(source, bytes) else _read(source, name)
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    _drop_pillows_bomb_warning()
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size  # before ``read``: seeking a GIF's frames can change it
            stored = stored_rawmode(img)  # before ``load``, which clears the tiles that say it
            img.load()
            result = read(img, stored)
    except UnidentifiedImageError as err:
        raise BadImageError(name, "not a recognised image format") from err
    except Image.DecompressionBombError as err:  # Pillow's words end in "DOS attack." and name no fix
        raise BadImageError(name, f"{err.args[0].split(',')[0]}: Pillow refuses an image over twice "
                                  "PIL.Image.MAX_IMAGE_PIXELS as a possible decompression bomb; if it is a real image, "
                                  "downscale it (the bench center-crops to the protocol's resolution anyway)") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, EOFError, struct.error...
        raise BadImageError(name, f"{type(err).__name__}: {err}") from err
    if warn_large:
        _warn_if_large(name, size)  # outside the try: a warning turned into an error (-W error) is not a bad image
    return result


def _drop_pillows_bomb_warning() -> None:
    """Filter out Pillow's DecompressionBombWarning (``_warn_if_large`` says it naming the file), unless already done;
    added again where the filters were reset since (pytest resets them for every test)."""
    for action, message, *_ in warnings.filters:
        if action == "ignore" and getattr(message, "pattern", message) == PILLOW_BOMB_WARNING:
            return
    warnings.filterwarnings("ignore", PILLOW_BOMB_WARNING, Image.DecompressionBombWarning)


def over_pixel_limit(size: tuple[int, int]) -> bool:
    """Whether an image of ``size`` is over ``PIL.Image.MAX_IMAGE_PIXELS``, as Pillow counts its pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and max(1, size[0]) * max(1, size[1]) > limit


def _warn_if_large(name: str, size: tuple[int, int]) -> None:
    """Warn of an image over ``PIL.Image.MAX_IMAGE_PIXELS`` (one over twice it Pillow refused already)."""
    if over_pixel_limit(size):
        warnings.warn(f"image {name} ({size[0]}x{size[1]}, {size[0] * size[1]} pixels) is over "
                      f"PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}), which Pillow warns of as a possible "
                      "decompression bomb: it is read, but every read of an image this large costs memory and time; "
                      "downscale it (the bench center-crops to the protocol's resolution anyway)",
                      Image.DecompressionBombWarning, stacklevel=2)


def warn_of_large_images(found: list[tuple[str, tuple[int, int]]], where: str) -> None:
    """One warning for the images of a scan (``where``: the source and split) over ``PIL.Image.MAX_IMAGE_PIXELS``,
    ``found`` as (name, size), the first as the example; nothing when there are none."""
    if found:
        name, (w, h) = found[0]
        warnings.warn(f"{where}: {len(found)} image(s) over PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS} pixels; "
                      f"e.g. {name}, {w}x{h}), which Pillow warns of as possible decompression bombs: they are read, "
                      "but every read of an image this large costs memory and time; downscale them (the bench "
                      "center-crops to the protocol's resolution anyway)", Image.DecompressionBombWarning, stacklevel=3)


ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})  # LAB's "A" band is a colour axis, not alpha


def has_transparent_pixels(img: Image.Image) -> bool:
    """Whether a decoded image has a pixel with alpha below 255 (an alpha band, or a palette / transparency key)."""
    if img.mode in ALPHA_MODES:
        return img.getchannel("A").getextrema()[0] < 255
    if "transparency" not in img.info:
        return False
    if _is_wide_integer(img):  # Pillow's I;16 -> RGBA conversion ignores the key: every pixel would read opaque
        return bool(np.any(np.asarray(img) == img.info["transparency"]))
    return img.convert("RGBA").getchannel("A").getextrema()[0] < 255


def _is_wide_integer(img: Image.Image) -> bool:
    """Whether the image is in one of PIL's 16/32-bit integer modes (I, I;16, I;16B, I;16L...)."""
    return img.mode == "I" or img.mode.startswith("I;16")


def exif_orientation(img: Image.Image) -> int:
    """The image's EXIF orientation tag (2-8: to be mirrored or turned for display), 1 when it has none."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 (a malformed EXIF block: the pixels decoded, nothing to turn them by)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def stored_rawmode(img: Image.Image) -> str:
    """How an opened, not yet loaded, file lays out its pixels: Pillow's raw mode of its first tile ("RGB;16B" for a
    16-bit RGB PNG, "RGB" for an 8-bit one), or "" where the plugin gives none. Loading clears the tiles, and the mode
    of a 16-bit RGB file is the 8-bit "RGB" it is read as."""
    if not img.tile:
        return ""
    args = img.tile[0][3]  # (codec, extents, offset, args): a tuple before Pillow 11, a named tuple since
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode if isinstance(rawmode, str) else ""


def off_scale(img: Image.Image, stored: str = "") -> str | None:
    """Why a float or 16/32-bit image looks saved on a narrower scale than the one it is read on (float 0..255,
    integer 0..65535), or None: every value in [0, 1] (a [0, 1] float image) or in 0..255 (8-bit data in a wider
    integer file). Such an image converts to nearly black, and its metrics are silently wrong.

    ``stored``: the file's ``stored_rawmode``. Pillow reads a file of 16 bits per colour channel (RGB, RGBA and LA PNGs
    and TIFFs) as 8-bit by each value's high byte, so only the loaded image's colour channels being 0 everywhere
    tell that every value was in 0..255 (the low bytes are gone: an all-black 16-bit image is reported too, and reads
    black either way). Without this, two folders of such files measured as identical black images: PSNR inf, SSIM 1.
    """
    if img.mode == "F":
        low, high = img.getextrema()
        return "every value in [0, 1]" if low >= 0 and 0 < high <= 1 else None
    if _is_wide_integer(img):  # from the array: PIL's getextrema raises "image has wrong mode" for I;16B
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        return "every value in 0..255" if low >= 0 and 0 < high <= 255 else None
    if stored.endswith((";16B", ";16L", ";16N")):  # 16 bits per channel ("BGR;16" is a BMP's 5-6-5 pixel)
        values = np.asarray(img)
        colour = values[..., :-1] if img.mode in ALPHA_MODES else values  # alpha is dropped, not measured
        return None if colour.any() else "16 bits per channel, every value in 0..255"
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (conventions in the module docstring)."""
    if img.mode == "RGB":
        return img
    if _is_wide_integer(img):
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        return _gray_to_rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def _read(path: str | Path, name: str) -> bytes:
    """Read a file's bytes, turning I/O errors into BadImageError."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        if Path(path).is_symlink() and not Path(path).exists():  # `ls` lists it, so "No such file" alone puzzles
            raise BadImageError(name, f"a broken link: it points to {os.readlink(path)}, which does not exist") from err
        raise BadImageError(name, f"cannot read file: {err}") from err


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 by rounding value / 257 (65535 / 255 == 257 exactly)."""
    values = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(values / 257.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """Replicate a (H, W) uint8 array into an RGB image."""
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
