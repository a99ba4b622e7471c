"""``imagefolder:<dir>``: a folder of images, one sub-folder per class, like torchvision's ImageFolder.

If ``<dir>/<split>`` exists it is used for that split, otherwise ``<dir>`` itself serves every
split, unless ``<dir>`` holds other split folders (``train``, ``val``...): then a missing split
is an error, not a dataset whose classes are the split names. Class names are the sorted
sub-folder names (so label indices match torchvision's ImageFolder); hidden folders (``.*``,
such as ``.ipynb_checkpoints``) and ``__MACOSX`` are not classes, and a class folder without
images is an error (it would shift every later label). Images are found recursively under each
class folder, in sorted order, following symbolic links but entering each folder once (a link
back up the tree does not repeat images). A folder with no sub-folders is one class named "".
Files whose extension is not in IMAGE_EXTENSIONS (README.txt, .DS_Store...) are ignored and
counted (``n_ignored_non_image``); when class sub-folders exist, image files lying directly in
the root are ignored too, and counted (``n_ignored_outside_classes``); the first few of each are
named (``ignored_*_examples``), for the bench to say so. A folder that cannot be
listed is an error naming it: its images are never dropped silently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from latentbench.data.encoded import EncodedImageDataset
from latentbench.data.images import IMAGE_EXTENSIONS, is_image_file
from latentbench.data.info import SplitNotFoundError
from latentbench.data.scancache import Stamp

MAX_EXAMPLES = 3  # ignored files named in the info, per kind
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "eval", "test", "testing")


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

    def scan_key(self, index: int) -> str | None:
        key = os.path.abspath(self.paths[index])
        try:
            key.encode()
        except UnicodeEncodeError:  # a name that is not UTF-8 on disk cannot be an SQLite text key: scanned every time
            return None
        return key

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
    paths, labels, non_images = [], [], []
    # a link inside one class folder back up to the split's root or into another class folder would list those
    # images a second time, under this class's label
    elsewhere = _distinct_folders(root, class_dirs) if class_names != [""] else {}
    for label, class_dir in enumerate(class_dirs):
        own = _identity(class_dir) if elsewhere else None
        outside = {k: d for k, d in elsewhere.items() if k != own}  # one stat per class, not one per pair
        images, others = _list_files(class_dir, recursive=bool(class_names[label]), outside=outside)
        if not images and class_names != [""]:
            raise ValueError(f"class folder {class_dir} holds no images ({' '.join(IMAGE_EXTENSIONS)}): every sub-folder "
                             f"of {root} is a class, so an empty one would shift the labels of the classes after it; "
                             "add its images or remove it")
        paths += images
        labels += [label] * len(images)
        non_images += others
    loose = _files_in(root) if class_names != [""] else []  # files beside the class folders
    # a hidden file (macOS's ._loose.png) is no image of the folder here either, as inside a class folder
    outside = [f for f in loose if is_image_file(f) and not _hidden(f)]
    non_images += [f for f in loose if not is_image_file(f) or _hidden(f)]
    if not paths:
        raise ValueError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found in folder {root}")
    return EncodedImageDataset(
        FolderFiles(paths, labels), source, split, resolution, class_names, on_bad_image, limit,
        n_ignored_non_image=len(non_images), n_ignored_outside_classes=len(outside), root=str(root),
        **_ignored_examples(root, non_images, outside),
    )


def _ignored_examples(root: Path, non_images: list[str], outside: list[str]) -> dict[str, list[str]]:
    """The first MAX_EXAMPLES ignored files by kind, relative to ``root``, for the bench's line on them (an image format
    the suite does not read, images left beside the class folders): ``ignored_non_image_examples`` (hidden files, such
    as .DS_Store, are counted but not named) and ``ignored_outside_classes_examples``; each only where there is one,
    so the info of a folder without them stays as it was (it keys cached statistics)."""
    def named(files: list[str]) -> list[str]:
        return [os.path.relpath(f, root) for f in files[:MAX_EXAMPLES]]

    shown = [f for f in sorted(non_images) if not _hidden(f)]
    examples = {"ignored_non_image_examples": named(shown), "ignored_outside_classes_examples": named(outside)}
    return {key: value for key, value in examples.items() if value}


def _split_root(directory: Path, split: str) -> Path:
    """``directory/split`` if it is a folder, else ``directory`` itself (unless it holds other splits)."""
    try:
        is_dir = directory.is_dir()
    except OSError as err:  # e.g. no permission on a parent folder
        _cannot_list(err)
    if not is_dir:
        raise FileNotFoundError(f"image folder {directory} does not exist or is not a folder")
    if (directory / split).is_dir():
        return directory / split
    splits = sorted(name for name in _subfolders(directory) if name.lower() in SPLIT_NAMES)
    if splits:
        raise SplitNotFoundError(f"image folder {directory} (which holds split folders, so it cannot serve as every "
                                 f"split itself)", split, splits)
    return directory


def _find_classes(root: Path) -> tuple[list[str], list[Path]]:
    """Sorted sub-folder names and paths; a folder without sub-folders is the single class ""."""
    names = sorted(_subfolders(root))
    if not names:
        return [""], [root]
    return names, [root / name for name in names]


def _subfolders(directory: Path) -> list[str]:
    """Names of the folders in ``directory`` that can be classes (not hidden, not ``__MACOSX``)."""
    return [entry.name for entry in _scandir(directory) if entry.is_dir() and not _skipped_folder(entry.name)]


def _skipped_folder(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _files_in(directory: Path) -> list[str]:
    """Sorted paths of the plain files directly in ``directory`` (a broken link too: reading it reports it)."""
    return sorted(entry.path for entry in _scandir(directory)
                  if entry.is_file() or (entry.is_symlink() and not entry.is_dir()))


def _distinct_folders(root: Path, class_dirs: list[Path]) -> dict[tuple[int, int], Path]:
    """The split's root and its class folders by identity; ValueError when a class folder is itself a link to the
    root or to another class's folder (its images would be listed under two labels)."""
    folders = {_identity(root): root}
    for class_dir in class_dirs:
        same = folders.setdefault(_identity(class_dir), class_dir)
        if same == root:
            raise ValueError(f"class folder {class_dir} is the split's root {root} (a link): every class's images would "
                             "be listed again under its label; remove the link")
        if same != class_dir:
            raise ValueError(f"class folders {same} and {class_dir} are the same folder (one links to the other): its "
                             "images would be listed under both labels; remove the link")
    return folders


def _identity(directory: Path) -> tuple[int, int]:
    st = os.stat(directory)
    return st.st_dev, st.st_ino


def _list_files(directory: Path, recursive: bool, outside: dict[tuple[int, int], Path] | None = None,
                revisits: list[tuple[str, str]] | None = None) -> tuple[list[str], list[str]]:
    """Sorted image paths under ``directory``, and the other files next to them (ignored), from one listing.

    Hidden files (``.*``: macOS's ``._name.png`` resource forks, editor backups) are not images of
    the folder, as hidden folders are not classes. ``revisits``: as ``_walk``'s.
    """
    files = ([os.path.join(d, f) for d, names in _walk(directory, outside, revisits) for f in names] if recursive
             else _files_in(directory))
    is_listed = [is_image_file(f) and not _hidden(f) for f in files]
    return [f for f, listed in zip(files, is_listed, strict=True) if listed], [f for f, listed in zip(files, is_listed, strict=True) if not listed]


def image_files(directory: str | Path, others: list[str] | None = None,
                revisits: list[tuple[str, str]] | None = None) -> list[str]:
    """Sorted image paths under ``directory``, recursively, listed as the bench's image folders are: hidden
    files and folders and ``__MACOSX`` left out, links followed, each folder entered once. ``others``, when
    given, receives the files of the same listing that are not images (hidden ones aside); ``revisits``, the
    folders reached again through a link (``_walk``), whose files are listed under their first path only."""
    images, rest = _list_files(Path(directory), recursive=True, revisits=revisits)
    if others is not None:
        others += [f for f in rest if not _hidden(f)]
    return images


def _hidden(path: str) -> bool:
    """A hidden file (``.*``: macOS's ``._name.png`` resource forks, .DS_Store, editor backups)."""
    return os.path.basename(path).startswith(".")


def _walk(directory: Path, outside: dict[tuple[int, int], Path] | None = None,
          revisits: list[tuple[str, str]] | None = None) -> list[tuple[str, list[str]]]:
    """(folder, sorted file names) under ``directory``, sorted; links followed, each real folder entered once.
    A link that reaches one of the folders ``outside`` (by device and inode: the split's root, other classes)
    is refused, naming it. ``revisits``, when given, receives (path, path it was listed under) of each folder
    reached again, which is not listed again.

    Hand-written around ``os.walk`` because its ``followlinks=True`` walks a link to a parent
    forever-deep (until the path is too long) and its default ``onerror`` drops an unreadable
    folder without a word.
    """
    seen: dict[tuple[int, int], str] = {}  # each folder's identity: the path it was listed under
    out = []
    for folder, dirs, names in os.walk(directory, followlinks=True, onerror=_cannot_list):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: its images are listed already
            if revisits is not None:
                revisits.append((folder, seen[(st.st_dev, st.st_ino)]))
            dirs[:] = []
            continue
        if outside and (st.st_dev, st.st_ino) in outside:
            raise ValueError(f"{folder}, reached through a link inside class folder {directory}, is "
                             f"{outside[(st.st_dev, st.st_ino)]}, the split's root or another class's folder: its images "
                             f"would be listed again under {Path(directory).name}'s label; remove the link")
        seen[(st.st_dev, st.st_ino)] = folder
        dirs[:] = sorted(d for d in dirs if not _skipped_folder(d))
        out.append((folder, sorted(names)))
    return sorted(out)


def _scandir(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as err:
        _cannot_list(err)


def _cannot_list(err: OSError) -> None:
    raise ValueError(f"cannot list folder {err.filename}: {err.strerror or err}; its images would be left out "
                     "without a word: fix its permissions, or move it out of the dataset") from err
