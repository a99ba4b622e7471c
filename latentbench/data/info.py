"""What every dataset records about itself: the ``info`` dict and its content fingerprint."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

MAX_LISTED_SKIPS = 100  # ``info["skipped"]`` lists at most this many files; ``n_skipped`` counts all


class SplitNotFoundError(KeyError, ValueError):
    """A split name the source does not have; the message lists the ones it has."""

    def __init__(self, source: str, split: str, available: Sequence[str]):
        self.message = f"{source} has no split {split!r}; available splits: {', '.join(map(repr, available))}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message  # KeyError would print the message in quotes


def content_fingerprint(
    item_digests: Iterable[bytes],
    labels: Iterable[int],
    *,
    split: str,
    resolution: int,
    preprocessing: str,
    class_names: Sequence[str],
    extra: dict | None = None,
) -> str:
    """sha256 hex digest of the dataset's content, independent of where it is stored.

    Args:
        item_digests: per image, a digest of its encoded bytes or pixel array, in dataset order.
        labels: per image, its integer label, same order.
        split: the split name.
        resolution: output side length.
        preprocessing: preprocessing id (e.g. "adm-center-crop").
        class_names: the class names, in label order.
        extra: anything else that defines the content (e.g. a generator version).

    Returns:
        64-character hex string.
    """
    header = dict(split=split, resolution=resolution, preprocessing=preprocessing, class_names=list(class_names))
    h = hashlib.sha256(json.dumps({**header, **(extra or {})}, sort_keys=True).encode())
    for digest, label in zip(item_digests, labels, strict=True):
        h.update(digest)
        h.update(int(label).to_bytes(8, "little", signed=True))
    return h.hexdigest()


def dataset_info(
    source: str,
    split: str,
    resolution: int,
    *,
    n: int,
    class_names: Sequence[str],
    fingerprint: str,
    preprocessing: str,
    limit: int | None,
    n_skipped: int = 0,
    skipped: Sequence[dict] = (),
    n_ignored_non_image: int = 0,
    n_upsampled: int = 0,
    n_off_scale: int = 0,
    off_scale_example: dict | None = None,
    n_oriented: int = 0,
    oriented_example: dict | None = None,
    n_multiframe: int = 0,
    multiframe_example: dict | None = None,
    **extra,
) -> dict:
    """Assemble the JSON-serialisable ``info`` dict every dataset carries (keys as in the arguments).

    Args:
        source: the source string as given to ``build_dataset``.
        split: the split name.
        resolution: output side length.
        n: number of usable images (``len(dataset)``).
        class_names: class names in label order.
        fingerprint: ``content_fingerprint`` of the usable images.
        preprocessing: preprocessing id.
        limit: the ``limit`` that was applied, or None.
        n_skipped: unreadable files dropped under ``on_bad_image="skip"``.
        skipped: ``{"path", "reason"}`` of the skipped files (truncated to MAX_LISTED_SKIPS).
        n_ignored_non_image: files ignored because their extension is not an image extension.
        n_upsampled: images whose short side was below ``resolution``.
        n_off_scale: images that look saved on another scale than the one they are read on (nearly black);
            ``off_scale_example`` is the first's ``{"path", "reason"}``. Both only when it is not 0.
        n_oriented: images with an EXIF orientation, read as stored; ``oriented_example`` is the first's
            ``{"path", "orientation"}``. Both only when it is not 0.
        n_multiframe: images that hold several frames (an animated GIF, a multi-page TIFF), read as their first;
            ``multiframe_example`` is the first's ``{"path", "frames"}``. Both only when it is not 0.
        **extra: source-specific entries (root folder, column names...).

    Returns:
        The info dict.
    """
    # only when found: the info of ordinary data stays what it was (it keys gFID's cached reference statistics)
    doubts = dict(n_off_scale=n_off_scale, off_scale_example=off_scale_example) if n_off_scale else {}
    if n_oriented:
        doubts |= dict(n_oriented=n_oriented, oriented_example=oriented_example)
    if n_multiframe:
        doubts |= dict(n_multiframe=n_multiframe, multiframe_example=multiframe_example)
    return dict(
        source=source,
        split=split,
        resolution=resolution,
        n=n,
        num_classes=len(class_names),
        class_names=list(class_names),
        fingerprint=fingerprint,
        preprocessing=preprocessing,
        limit=limit,
        n_skipped=n_skipped,
        skipped=list(skipped)[:MAX_LISTED_SKIPS],
        n_ignored_non_image=n_ignored_non_image,
        n_upsampled=n_upsampled,
        **doubts,
        **extra,
    )
