"""Datasets, protocol-exact preprocessing and the embedded CI datasets.

``build_dataset(source, split, resolution)`` turns a source string (``describe_sources()``
lists them: mnist, shapes, imagefolder:<dir>, hf:<name_or_path>) into a dataset of
``(x, y)`` pairs, x in [-1, 1], with an ``info`` dict that records its content fingerprint
and every image that was skipped or upsampled.
"""
from latentbench.data.images import IMAGE_EXTENSIONS, BadImageError, load_rgb, to_rgb
from latentbench.data.info import SplitNotFoundError
from latentbench.data.sources import DATA_SOURCES, build_dataset, describe_sources
from latentbench.data.transforms import center_crop_arr, to_tensor

__all__ = [
    "BadImageError",
    "DATA_SOURCES",
    "IMAGE_EXTENSIONS",
    "SplitNotFoundError",
    "build_dataset",
    "center_crop_arr",
    "describe_sources",
    "load_rgb",
    "to_rgb",
    "to_tensor",
]
