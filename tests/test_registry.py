import re

import pytest

from latentbench.generators.module import GeneratorModule
from latentbench.registry import Registry, import_object, require_positive
from latentbench.tokenizers import TOKENIZERS, create_tokenizer
from latentbench.tokenizers.flowmo_module import FlowMoModule
from latentbench.tokenizers.module import AutoencoderModule


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


@pytest.mark.parametrize("name, init_args, named", [
    ("flowmo-smoke", {"latent_tokens": 0}, "latent_tokens"),  # encoded nothing and benched a 0-bit row
    ("flowmo-smoke", {"sample_steps": 0}, "sample_steps"),  # decoded the noise itself
    ("flowmo-smoke", {"patch_size": 0}, "patch_size"),  # ZeroDivisionError
    ("maetok-smoke", {"rope_base": -1.0}, "rope_base"),  # NaN positions
    ("maetok-smoke", {"latent_tokens": 0}, "latent_tokens"),
    ("rae-smoke", {"decoder_patch": 0}, "decoder_patch"),
    ("sdvae-smoke", {"latent_channels": 0}, "latent_channels"),
    ("sdvae-smoke", {"block_out_channels": [16, 0]}, "block_out_channels[1]"),
])
def test_a_size_that_is_not_positive_is_named_before_anything_is_built(name, init_args, named):
    with pytest.raises(ValueError, match=rf"init_args .*: ValueError: {re.escape(named)} must be positive, got "):
        create_tokenizer(name, **init_args)


@pytest.mark.parametrize("make, named", [
    (lambda: GeneratorModule("dit-smoke", [4, 4, 4], num_classes=3, lr=0.0, final_lr=0.0), "lr"),  # ZeroDivisionError
    (lambda: GeneratorModule("dit-smoke", [4, 4, 4], num_classes=3, init_args={"rope_base": -10.0, "pos": "rope"}), "rope_base"),
    (lambda: GeneratorModule("dit-smoke", [4, 4, 4], num_classes=3, init_args={"depth": 0}), "depth"),
    (lambda: GeneratorModule("maskgit-smoke", [4, 18], num_classes=3, init_args={"width": 0}), "width"),
    (lambda: AutoencoderModule("sdvae-smoke", lr=-1e-3), "lr"),
    (lambda: FlowMoModule("flowmo-smoke", posttrain_lr=0.0), "posttrain_lr"),
])
def test_training_modules_and_generators_name_a_rate_or_size_that_is_not_positive(make, named):
    with pytest.raises(ValueError, match=rf"\b{re.escape(named)} must be positive, got "):
        make()


def test_require_positive_lets_unset_options_through():
    require_positive(width=8, rope_base=None, ratio=0.5)
    with pytest.raises(ValueError, match=r"^heads must be positive, got -2$"):
        require_positive(width=8, heads=-2, depth=0)
