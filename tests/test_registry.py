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


def test_a_missing_module_and_a_module_missing_a_dependency_are_told_apart(tmp_path, monkeypatch):
    (tmp_path / "needsdep.py").write_text("import nonexistent_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="imports 'nonexistent_dependency_xyz', which is not installed here"):
        import_object("needsdep:Tok")
    with pytest.raises(ImportError, match=r"cannot import module 'nopkg_xyz.mod'.*Is it on PYTHONPATH\? \(the folder that holds nopkg_xyz/"):
        import_object("nopkg_xyz.mod:Tok")
