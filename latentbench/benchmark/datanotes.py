"""What the bench says about the data it scanned: one line per split on what its scan skipped, upsampled,
ignored or read doubtfully (``data_notes``), one when the train and eval splits are the same images
(``split_notes``), and the check that both splits name the same classes (``check_same_classes``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def data_notes(info: dict[str, Any]) -> list[str]:
    """The lines on a split's scan: one on what it dropped (``--on_bad_image skip``) or upsampled, one on images read
    nearly black, one on images read unturned, one on images read as their first frame (each with an example and the
    fix); none when there is nothing to say.

    The last three are ``latentbench metrics``' warnings (``standalone.ColourModes``): the bench trains and
    measures such images as they are read, so a folder saved on the wrong scale, turned by EXIF or animated gets a word.
    """
    prefix, lines, notes = f"{info['source']} [{info['split']}]: ", [], []
    if info.get("n_skipped"):
        first = info["skipped"][0]
        notes.append(f"skipped {info['n_skipped']} unreadable file(s), first {first['path']} ({first['reason']}); the row's "
                     "record in results.jsonl lists them (its data.train / data.eval skipped)")
    if info.get("n_upsampled"):
        notes.append(f"{info['n_upsampled']} of {info['n']} images have a side below {info['resolution']} px and are "
                     "upsampled (bicubic, ADM's center crop)")
    notes += ignored_notes(info)
    if notes:
        lines.append(prefix + "; ".join(notes))
    for count, example_key, facts in _IMAGE_FACTS:
        if info.get(count):
            lines.append(f"{prefix}{info[count]} of {info['n']} images {facts(info[example_key])}")
    return lines


# (count, example) keys of a split's info and what the bench says of such images, given the example
_IMAGE_FACTS: tuple[tuple[str, str, Callable[[dict[str, Any]], str]], ...] = (
    ("n_off_scale", "off_scale_example", lambda example: (
        f"look saved on another scale than the one they are read on (e.g. {example['path']}: {example['reason']}): "
        "float images are read on the 0..255 scale and 16/32-bit integer ones on 0..65535, so these are trained and "
        "measured nearly black; save them as 8-bit images (a [0, 1] float image as round(value * 255))")),
    ("n_oriented", "oriented_example", lambda example: (
        f"carry an EXIF orientation (e.g. {example['path']}: orientation {example['orientation']}): they are trained "
        "and measured as stored, not turned as image viewers (and Hugging Face datasets) show them, as ADM and "
        "torch-fidelity read them; transpose them first with PIL.ImageOps.exif_transpose if the turned image is what "
        "you mean")),
    ("n_multiframe", "multiframe_example", lambda example: (
        f"hold several frames (e.g. {example['path']}: {example['frames']} frames, an animated GIF or a multi-page "
        "TIFF): only the first frame is trained and measured, as ADM and torch-fidelity read them; save the frame you "
        "mean as a single-frame image (with PIL: img.seek(i), then img.save as PNG)")),
)


def ignored_notes(info: dict[str, Any]) -> list[str]:
    """What an image folder's listing left out, with examples: files whose extension is not an image's (an image format
    the suite does not read looks so: .heic, .avif) and images beside the class folders; hidden files alone say nothing."""
    from latentbench.data.images import IMAGE_EXTENSIONS

    def shown(key: str, count: int) -> str:
        examples = info.get(key) or []
        return ", ".join(examples) + (", ..." if count > len(examples) else "")

    notes = []
    if info.get("ignored_non_image_examples"):
        notes.append(f"ignored {info['n_ignored_non_image']} file(s) that are not images by their extension "
                     f"({shown('ignored_non_image_examples', info['n_ignored_non_image'])}): only "
                     f"{' '.join(IMAGE_EXTENSIONS)} files are read, so convert any images among them to one of those")
    if info.get("ignored_outside_classes_examples"):
        notes.append(f"ignored {info['n_ignored_outside_classes']} image file(s) beside the class folders "
                     f"({shown('ignored_outside_classes_examples', info['n_ignored_outside_classes'])}): each sub-folder "
                     "is a class and only images inside one are read; move them into their class's folder")
    return notes


def split_notes(train: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """A line when the train and eval splits are read from the same images (``data.same_images``: an image folder
    without split sub-folders, a single saved Hugging Face Dataset), as the bench then measures images it trained on;
    none otherwise."""
    from latentbench.data.sources import same_images

    if train["source"] != evaluation["source"]:
        return []
    # both take their first usable images (data.num_train / num_eval): the smaller split is all in the larger one
    shared = min(train["n"], evaluation["n"])
    effect = ("so the bench trains on the images it measures (reconstruction metrics, rFID and the probe are not on "
              "held-out images)")
    if train["split"] == evaluation["split"]:  # any source: the protocol itself names one split twice
        return [f"{evaluation['source']}: the protocol's train and eval split are both {train['split']!r} ({shared} of "
                f"the {evaluation['n']} eval images are train images too), {effect}; to hold images out, give the "
                "protocol's data.eval_split another split"]
    where = same_images(evaluation["source"], (train["split"], evaluation["split"]))
    if where is None:
        return []
    fix = (f"save a DatasetDict with {train['split']!r} and {evaluation['split']!r} splits of different images"
           if evaluation["source"].startswith("hf:") else f"give it {train['split']}/ and {evaluation['split']}/ folders of different images")
    return [f"{evaluation['source']}: the {train['split']} and {evaluation['split']} splits are read from the same images "
            f"({where}; {shared} of the {evaluation['n']} {evaluation['split']} images are {train['split']} images too), "
            f"{effect}; to hold images out, {fix}"]


def check_same_classes(train: dict[str, Any], evaluation: dict[str, Any]) -> None:
    """ValueError unless the two splits' infos name the same classes in the same order (labels are indices)."""
    if train["class_names"] != evaluation["class_names"]:
        # an hf split's classes are its ClassLabel's names, or 0..its largest label without one
        fix = ("give both splits' label column one ClassLabel of every class (`dataset.cast_column('label', "
               "datasets.ClassLabel(names=[...]))`) and save them again" if train["source"].startswith("hf:")
               else "give both splits the same class folders")
        raise ValueError(
            f"the {train['split']} split's classes {_names(train['class_names'])} and the {evaluation['split']} split's "
            f"{_names(evaluation['class_names'])} differ: the linear probe and gFID's classes read labels as indices, "
            f"so class i must be the same class in both; {fix}"
        )


def _names(names: list[str], shown: int = 8) -> str:
    return str(names[:shown])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > shown else "]")
