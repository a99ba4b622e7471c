import pytest

from latentbench.registry import Registry, import_object
from latentbench.tokenizers import TOKENIZERS, create_tokenizer


def test_duplicate_name_raises():
    reg = Registry("thing")
    reg.register("a")(dict)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(list)


def test_unknown_name_suggests_close_match():
    with pytest.raises(KeyError, match="Did you mean sdvae-ci"):
        TOKENIZERS.get("sdvae-cj")


def test_module_class_path_imports():
    assert import_object("collections:OrderedDict").__name__ == "OrderedDict"
    with pytest.raises(ImportError, match="no attribute"):
        import_object("collections:Nope")
    with pytest.raises(ValueError, match="package.module:ClassName"):
        import_object("collections")


def test_registry_lists_sdvae_sizes():
    assert {"sdvae-f8", "sdvae-ci", "sdvae-smoke", "sdvae-ft-mse", "sdvae-ft-ema"} <= set(TOKENIZERS.names())
    assert all(TOKENIZERS.help(n) for n in TOKENIZERS.names())


def test_create_tokenizer_rejects_non_tokenizer():
    with pytest.raises(TypeError, match="is not a tokenizer"):
        create_tokenizer("collections:OrderedDict")
