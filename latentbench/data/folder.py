"""``imagefolder:<dir>``: a folder of images, one sub-folder per class, like torchvision's ImageFolder.

If ``<dir>/<split>`` exists it is used for that split, otherwise ``<dir>`` itself serves every
split. Class names are the sorted sub-folder names (so label indices match torchvision's
ImageFolder); images are found recursively under each class folder, in sorted order. A
folder with no sub-folders is one class named "". Files whose extension is not in
IMAGE_EXTENSIONS (README.txt, .DS_Store...) are ignored and counted (``n_ignored_non_image``);
when class sub-folders exist, image files lying directly in the root are ignored too, and
counted (``n_ignored_outside_classes``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from latentbench.data.encoded import EncodedImageDataset
from latentbench.data.images import IMAGE_EXTENSIONS, is_image_file
from latentbench.data.scancache import Stamp


@dataclass
class FolderFiles:
    """Image files on disk with their labels (a CacheableFiles: the scan cache keys them by absolute path)."""

    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        return Path(self.paths[index]).read_bytes()

    def name(self, index: int) -> str:
        return self.paths[index]

    def label(self, index: int) -> int:
        return self.labels[index]

    def scan_key(self, index: int) -> str:
        return os.path.abspath(self.paths[index])

    def scan_stamp(self, index: int) -> Stamp:
        return Stamp.of(self.paths[index])


def build_imagefolder(
    directory: str, source: str, split: str, resolution: int, on_bad_image: str = "error", limit: int | None = None
) -> EncodedImageDataset:
    """Build the dataset of an image folder (see the module docstring for the layout).

    Args:
        directory: the folder (``<dir>`` in ``imagefolder:<dir>``).
        source: the source string, recorded in ``info``.
        split: split name; selects ``<dir>/<split>`` when that folder exists.
        resolution: output side length.
        on_bad_image: "error" or "skip".
        limit: keep only the first ``limit`` usable images.

    Returns:
        An EncodedImageDataset.
    """
    root = _split_root(Path(directory), split)
    class_names, class_dirs = _find_classes(root)
    paths, labels, n_non_image = [], [], 0
    for label, class_dir in enumerate(class_dirs):
        images, others = _list_files(class_dir, recursive=bool(class_names[label]))
        paths += images
        labels += [label] * len(images)
        n_non_image += others
    loose = _files_in(root) if class_names != [""] else []  # files beside the class folders
    n_outside = sum(map(is_image_file, loose))
    n_non_image += len(loose) - n_outside
    if not paths:
        raise ValueError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found in folder {root}")
    return EncodedImageDataset(
        FolderFiles(paths, labels), source, split, resolution, class_names, on_bad_image, limit,
        n_ignored_non_image=n_non_image, n_ignored_outside_classes=n_outside, root=str(root),
    )


def _split_root(directory: Path, split: str) -> Path:
    """``directory/split`` if it is a folder, else ``directory`` itself."""
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist or is not a folder")
    return directory / split if (directory / split).is_dir() else directory


def _find_classes(root: Path) -> tuple[list[str], list[Path]]:
    """Sorted sub-folder names and paths; a folder without sub-folders is the single class ""."""
    names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not names:
        return [""], [root]
    return names, [root / name for name in names]


def _files_in(directory: Path) -> list[str]:
    """Sorted paths of the plain files directly in ``directory``."""
    return sorted(entry.path for entry in os.scandir(directory) if entry.is_file())


def _list_files(directory: Path, recursive: bool) -> tuple[list[str], int]:
    """Sorted image paths under ``directory`` and the number of non-image files next to them."""
    if recursive:
        walk = sorted(os.walk(directory, followlinks=True))
        files = [os.path.join(d, f) for d, _, names in walk for f in sorted(names)]
    else:
        files = _files_in(directory)
    images = [f for f in files if is_image_file(f)]
    return images, len(files) - len(images)
