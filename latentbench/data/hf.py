"""``hf:<name_or_path>``: an image dataset from Hugging Face ``datasets``.

A local folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` is opened
with ``datasets.load_from_disk`` (a DatasetDict must have the split; a single Dataset serves
every split). Anything else goes to ``datasets.load_dataset(name, split=split)``, e.g.
``hf:ILSVRC/imagenet-1k`` with split ``validation`` (gated: log in and accept its terms).

The image column is the first ``datasets.Image`` feature; the label column is the first
``ClassLabel``, else an integer column named "label" or "labels", else every label is 0.
Images are read as encoded bytes and decoded by ``latentbench.data.images.load_rgb``, so
colour conversion and bad-file handling are the same as for image folders.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from latentbench.data.encoded import EncodedImageDataset
from latentbench.data.images import BadImageError
from latentbench.data.info import SplitNotFoundError
from latentbench.data.scancache import Stamp

LABEL_COLUMN_NAMES = ("label", "labels")
_TRUE = ("1", "ON", "YES", "TRUE")


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub cannot be reached and the dataset is not in the local cache."""


class HFImageRows:
    """The encoded images of one column of a ``datasets.Dataset`` (an EncodedFiles).

    A dataset backed by Arrow files (``load_from_disk``, the hub cache) is a CacheableFiles: a row's
    scan-cache key names the Arrow files with their stamps, so rewriting any of them misses every row, and
    the split it was loaded as (``train[4:8]`` numbers the rows of the files ``train[:4]`` reads from their 5th).
    """

    def __init__(self, dataset, image_column: str, labels: list[int], display_name: str, split: str = ""):
        import datasets

        self.rows = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        self.column = image_column
        self.labels = labels
        self.display_name = display_name
        self.arrow_id, self.arrow_stamp = _arrow_identity(dataset, image_column, split)
        self.all_bytes = self.arrow_id is not None and _all_rows_hold_bytes(self.rows, image_column)

    def __len__(self) -> int:
        return len(self.rows)

    def _cell(self, index: int) -> dict | None:
        return self.rows[index][self.column]  # {"bytes": ..., "path": ...}, or None for a row without an image

    def read(self, index: int) -> bytes:
        cell = self._cell(index)
        if cell is not None and cell["bytes"] is not None:
            return cell["bytes"]
        if cell is None or cell["path"] is None:
            raise BadImageError(self.name(index), f"the row has no image (its {self.column!r} cell is empty)")
        return Path(cell["path"]).read_bytes()

    def scan_key(self, index: int) -> str | None:
        return None if self.arrow_id is None else f"hf:{self.arrow_id}:{index}"

    def scan_stamp(self, index: int) -> Stamp:
        if self.all_bytes:
            return self.arrow_stamp
        cell = self._cell(index)  # a row that names its image by path also depends on that file
        if cell is None or cell["bytes"] is not None or cell["path"] is None:
            return self.arrow_stamp
        return Stamp.combined([self.arrow_stamp, Stamp.of(cell["path"])])

    def name(self, index: int) -> str:
        return f"{self.display_name}[{index}]"

    def label(self, index: int) -> int:
        return self.labels[index]


def _arrow_identity(dataset, column: str, split: str = "") -> tuple[str | None, Stamp | None]:
    """A name for the dataset's rows in its Arrow files as they are now (paths, stamps, column, and the ``split``
    that selected them: a slice such as ``train[4:8]`` starts its row numbers inside the files), and their joint stamp.

    (None, None) when the rows are not all in Arrow files on disk: an in-memory table, or an
    in-memory indices mapping (``select``/``shuffle`` without a cache file) that renumbers them.
    """
    files = sorted({f["filename"] for f in dataset.cache_files})
    if not files or getattr(dataset, "_indices", None) is not None:  # renumbered rows: not worth the risk
        return None, None
    try:
        stamps = [Stamp.of(f) for f in files]
    except OSError:
        return None, None
    text = json.dumps([column, [os.path.abspath(f) for f in files], [dataclasses.astuple(s) for s in stamps]]
                      + ([split] if split else []))
    return hashlib.sha256(text.encode()).hexdigest()[:32], Stamp.combined(stamps)


def _all_rows_hold_bytes(rows, column: str) -> bool:
    """Whether every image cell holds its bytes (none names a file by path): then no row needs a stat."""
    import pyarrow as pa

    chunks = rows.data.column(column).chunks
    return all(pa.types.is_struct(c.type) and c.field("bytes").null_count == 0 for c in chunks)


def build_hf(
    name: str, source: str, split: str, resolution: int, on_bad_image: str = "error", limit: int | None = None
) -> EncodedImageDataset:
    """Build the dataset of a Hugging Face image dataset (see the module docstring).

    Args:
        name: hub dataset name or local ``save_to_disk`` folder.
        source: the source string, recorded in ``info``.
        split: split name.
        resolution: output side length.
        on_bad_image: "error" or "skip".
        limit: keep only the first ``limit`` usable images.

    Returns:
        An EncodedImageDataset.
    """
    dataset = load_hf_split(name, split)
    image_column = find_image_column(dataset.features, name)
    label_column, class_names = find_labels(dataset.features)
    labels = _labels(dataset, label_column, f"hf:{name} [{split}]") if label_column else [0] * len(dataset)
    if label_column and not class_names:
        class_names = [str(i) for i in range(max(labels, default=-1) + 1)]
    _check_label_range(labels, len(class_names), label_column, f"hf:{name} [{split}]")
    rows = HFImageRows(dataset, image_column, labels, f"{name}:{split}", split)
    return EncodedImageDataset(
        rows, source, split, resolution, class_names or [""], on_bad_image, limit,
        image_column=image_column, label_column=label_column,
    )


def _labels(dataset, column: str, where: str) -> list[int]:
    """The label column as ints; ValueError naming the column when it does not hold integers (e.g. class names).

    Read from the Arrow data, not through the dataset's format: one saved with ``set_format("numpy")``
    or ``"torch"`` yields numpy or tensor scalars. Whole-number floats count as integers.
    """
    values = dataset.data.column(column).to_pylist()

    def is_index(v) -> bool:
        return not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, float) and v.is_integer())

    row = next((i for i, v in enumerate(values) if not is_index(v)), None)
    if row is not None:
        bad = values[row]
        fix = ("label every row, or bench a labelled split" if bad is None else
               f"make it a ClassLabel (`dataset.class_encode_column({column!r})`) and save it again")
        raise ValueError(f"{where}: label column {column!r} holds {type(bad).__name__} values (row {row}: {bad!r}), not "
                         f"class indices: {fix}")
    return [int(v) for v in values]


def _check_label_range(labels: list[int], num_classes: int, column: str | None, where: str) -> None:
    """ValueError unless every label is a class index (0 .. num_classes - 1): -1 is Hugging Face's "no label"."""
    bad = [i for i, label in enumerate(labels) if not 0 <= label < max(num_classes, 1)]
    if bad:
        raise ValueError(f"{where}: {len(bad)} of {len(labels)} rows have a label outside 0..{num_classes - 1} in column "
                         f"{column!r} (row {bad[0]}: {labels[bad[0]]}; -1 is Hugging Face's mark of an unlabelled row, as "
                         "in ImageNet-1k's test split): bench a labelled split (ImageNet-1k: validation)")


def load_hf_split(name: str, split: str):
    """One split of a local ``save_to_disk`` folder or of a hub dataset, as a ``datasets.Dataset``."""
    import datasets

    name = _check_local_path(name)
    if _is_saved_to_disk(name):
        saved = datasets.load_from_disk(name)
        if not isinstance(saved, datasets.DatasetDict):
            return saved
        if split not in saved:
            raise SplitNotFoundError(f"hf:{name}", split, list(saved))
        return saved[split]
    try:
        with _offline_mode_from_env():
            return datasets.load_dataset(name, split=split)
    except ConnectionError as err:
        why = ("offline mode is set (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) and the Hugging Face cache (HF_HOME) has "
               "no copy of it" if _offline_set() else "it is unreachable")
        raise HubUnreachableError(
            f"cannot load {name!r} from the Hugging Face Hub: {why} ({err}). Fill the Hugging Face cache on a "
            f"connected machine (`datasets.load_dataset({name!r}, split=...)`), copy its HF_HOME here and set "
            "HF_DATASETS_OFFLINE=1; or save a copy once with `datasets.load_dataset(...).save_to_disk(DIR)` and give "
            "`hf:DIR` as the source (in a protocol file that is another protocol: its fingerprint changes)."
        ) from err


def _offline_set() -> bool:
    """Whether HF_HUB_OFFLINE or HF_DATASETS_OFFLINE asks for no hub access."""
    return any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def find_image_column(features, name: str) -> str:
    """Name of the first ``datasets.Image`` feature."""
    import datasets

    for column, feature in features.items():
        if isinstance(feature, datasets.Image):
            return column
    raise ValueError(f"hf:{name} has no column of type datasets.Image (columns: {list(features)})")


def find_labels(features) -> tuple[str | None, list[str]]:
    """(label column, class names): the first ClassLabel, else a "label"/"labels" column, else (None, [])."""
    import datasets

    for column, feature in features.items():
        if isinstance(feature, datasets.ClassLabel):
            return column, list(feature.names)
    for column in LABEL_COLUMN_NAMES:
        if column in features:
            return column, []
    return None, []


def _check_local_path(name: str) -> str:
    """``name`` with ~ expanded if it is meant as a local path (raise if missing), else ``name`` unchanged.

    Hub names are "name" or "owner/name"; anything starting with / . ~ or with more slashes is
    a path, and a missing one fails here instead of after the hub's retries.
    """
    if not (name.startswith(("/", ".", "~")) or name.count("/") > 1):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"hf:{name}: no such folder (hub dataset names look like 'owner/name')")
    return str(path)


def _is_saved_to_disk(name: str) -> bool:
    """Whether ``name`` is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    path = Path(name)
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


@contextlib.contextmanager
def _offline_mode_from_env() -> Iterator[None]:
    """Honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as they are now, not as they were at import.

    ``datasets`` and ``huggingface_hub`` read these variables once, when imported; a process
    that sets them later (a CLI flag, a test) would otherwise retry the unreachable hub for
    about 25 s before failing. No library exposes a call-time switch, so set their flags here.
    """
    import datasets
    import huggingface_hub.constants as hub_constants

    if not _offline_set():
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
