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


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(on_bad_image="warn"), "'error', 'skip'"),
    (dict(resolution=0), "resolution"),
    (dict(resolution=32.0), "resolution"),
    (dict(limit=0), "limit"),
])
def test_argument_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(**{"source": "mnist", "split": "train", "resolution": 32, **kwargs})
