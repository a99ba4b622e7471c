"""build_dataset's source parsing and argument checks, and the help text."""
import json

import pytest

from latentbench.data import DATA_SOURCES, build_dataset, describe_sources

REQUIRED_INFO = {
    "source", "split", "resolution", "n", "num_classes", "class_names", "fingerprint", "preprocessing",
    "n_skipped", "skipped", "n_ignored_non_image", "n_upsampled", "limit",
}


def test_describe_sources_lists_every_syntax():
    text = describe_sources()
    assert text == DATA_SOURCES
    for syntax in ("mnist", "shapes[:<n_train>:<n_val>]", "imagefolder:<dir>", "hf:<name_or_path>"):
        assert syntax in text


@pytest.mark.parametrize("source", ["mnist", "shapes:8:4"])
def test_info_is_complete_and_json_serialisable(source):
    info = build_dataset(source, "val", 32, limit=4).info
    assert REQUIRED_INFO <= set(info) and info["source"] == source and info["n"] == 4
    assert json.loads(json.dumps(info)) == info


@pytest.mark.parametrize("source", ["cifar10", "imagefolder:", "hf:", "mnist:extra", "folder:/x"])
def test_unknown_source_shows_the_syntaxes(source):
    with pytest.raises(ValueError, match="unknown data source") as info:
        build_dataset(source, "train", 32)
    assert "imagefolder:<dir>" in str(info.value)


@pytest.mark.parametrize(("source", "guess"), [
    ("mnsit", "'mnist'"),
    ("mnist:extra", "'mnist'"),
    ("folder:/x", "'imagefolder:/x'"),
    ("imagefoler:/x", "'imagefolder:/x'"),
    ("/data/mine", "'imagefolder:/data/mine'"),  # a path without its prefix
    ("imagefolder:", "'imagefolder:<dir>'"),
    ("cifar10", None),
])
def test_an_unknown_source_is_one_line_with_the_likely_meant_one(source, guess):
    """It used to be the bare 'unknown data source' followed by the twelve lines of DATA_SOURCES."""
    with pytest.raises(ValueError) as info:
        build_dataset(source, "train", 32)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"unknown data source {source!r}")
    assert (f"(did you mean {guess}?)" in message) if guess else ("did you mean" not in message)


def test_a_folder_given_without_its_prefix_is_named_as_an_image_folder(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(ValueError, match=f"did you mean 'imagefolder:{folder}'"):
        build_dataset(str(folder), "train", 32)
    monkeypatch.chdir(tmp_path)  # a relative path names a folder of the working directory
    with pytest.raises(ValueError, match="did you mean 'imagefolder:mine'"):
        build_dataset("mine", "train", 32)
    (folder / "dataset_dict.json").write_text("{}")  # a Hugging Face save_to_disk folder is read by hf:
    with pytest.raises(ValueError, match="did you mean 'hf:mine'"):
        build_dataset("mine", "train", 32)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(on_bad_image="warn"), "'error', 'skip'"),
    (dict(resolution=0), "resolution"),
    (dict(resolution=32.0), "resolution"),
    (dict(limit=0), "limit"),
])
def test_argument_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(**{"source": "mnist", "split": "train", "resolution": 32, **kwargs})
