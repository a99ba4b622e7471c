"""Feature extractors: equal to their reference implementations, honest about missing weights,
and (for the suite-trained domain classifiers) deterministic and cached."""
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentbench.benchmark import extractors as ex
from latentbench.benchmark.extractors import (
    EXTRACTORS,
    DomainRecipe,
    check_images,
    create_extractor,
)
from latentbench.weights import WeightsUnavailable, sha256_file

TINY = DomainRecipe(epochs=1, limit=128, max_steps=3, batch_size=32)  # seconds, not a useful classifier


def _images(n, size, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_the_extractors():
    assert {"inception-tf", "dinov2-vitb14", "domain-mnist", "domain-shapes"} <= set(EXTRACTORS.names())
    assert all(EXTRACTORS.help(n) for n in EXTRACTORS.names())


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_extractor_contract(name, built):
    """Every registered extractor: its facts, (B, dim) float32 features, frozen, uint8 input only."""
    e = built(name)
    assert isinstance(e, ex.FeatureExtractor) and e.id == name
    assert len(e.weights_sha256) == 64 and e.preprocessing and e.metric_name
    json.dumps(e.describe())  # what a result records is JSON
    assert not e.training and not any(p.requires_grad for p in e.parameters())
    features = e(_images(2, 32))
    assert features.shape == (2, e.dim) and features.dtype == torch.float32 and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="uint8"):
        e(_images(2, 32).float())


def test_unknown_name_is_an_error_that_lists_the_names():
    with pytest.raises(KeyError, match="unknown extractor 'inception'.*inception-tf"):
        create_extractor("inception")
    with pytest.raises(ValueError, match="extractor domain-foo is a classifier trained on the data source 'foo', which "
                                         "does not resolve: unknown data source 'foo'"):
        create_extractor("domain-foo")


@pytest.mark.parametrize("bad", [
    torch.zeros(2, 3, 32, 32),  # float, not uint8
    torch.zeros(3, 32, 32, dtype=torch.uint8),  # no batch dimension
    torch.zeros(2, 1, 32, 32, dtype=torch.uint8),  # grey
    np.zeros((2, 3, 32, 32), dtype=np.uint8),  # not a tensor
])
def test_input_must_be_uint8_bchw(bad):
    with pytest.raises(ValueError, match=r"uint8 images of shape \(B, 3, H, W\)"):
        check_images(bad)


@pytest.fixture(scope="module")
def built(inception_weights, dinov2_weights, tmp_path_factory):
    """name -> that extractor, built once per module (random weights files for the pretrained ones)."""
    cache, options = tmp_path_factory.mktemp("cache"), {}
    weights = {"inception-tf": inception_weights, "dinov2-vitb14": dinov2_weights}

    def build(name):
        if name not in options:
            extra = {} if name in weights else dict(cache_dir=cache, recipe=TINY)
            options[name] = create_extractor(name, weights=weights.get(name), **extra)
        return options[name]

    return build


# ---------------------------------------------------------------------------------------- inception-tf


def test_inception_url_is_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert ex.INCEPTION_URL == URL_INCEPTION_V3


def test_inception_missing_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as err:
        create_extractor("inception-tf")
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert ex.INCEPTION_URL in message
    assert str(tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in message
    assert "--extractor_weights FILE" in message and "weights=" not in message
    with pytest.raises(WeightsUnavailable, match=r"the weights file given, /no/such\.pth, does not exist"):
        create_extractor("inception-tf", weights="/no/such.pth")


def test_inception_matches_torch_fidelity(inception_weights, built):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ours = built("inception-tf")
    ref = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights))
    assert (ours.id, ours.dim) == ("inception-tf", 2048)
    assert ours.weights_sha256 == sha256_file(inception_weights)
    assert ours.metric_name.startswith("FID(") and ours.weights_sha256[:12] in ours.metric_name  # not the official file
    assert not ours.info["official_weights"]
    for n, size in ((2, 32), (1, 64)):
        images = _images(n, size, seed=size)
        features = ours(images)
        (expected,) = ref(images)
        assert features.shape == (n, 2048) and features.dtype == torch.float32
        assert features.std() > 1e-3  # a non-degenerate random network
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_inception_found_in_torch_hub_dir(inception_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    hub.parent.mkdir(parents=True)
    hub.symlink_to(inception_weights)
    assert create_extractor("inception-tf").info["weights_path"] == str(hub)


# ---------------------------------------------------------------------------------------- domain-*


@pytest.fixture(scope="module")
def domain_cache(built):
    """The cache dir holding one tiny-recipe domain-mnist classifier, and the extractor built with it."""
    e = built("domain-mnist")
    return Path(e.info["cache_path"]).parents[1], e


def test_domain_extractor_facts(domain_cache):
    root, e = domain_cache
    assert (e.id, e.dim, e.metric_name) == ("domain-mnist", 128, "FID-domain(mnist)")
    path = Path(e.info["cache_path"])
    assert path.parent == root / "extractors" and path.is_file() and path.name.startswith("domain-mnist-") and path.suffix == ".safetensors"
    assert e.weights_sha256 == sha256_file(path)
    assert e.info["train_images"] == 128 and e.info["steps"] == 3 and e.info["val_images"] == 1000
    assert 0 <= e.info["val_accuracy"] <= 1
    assert e.info["recipe"] == asdict(TINY)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["weights_sha256"] == e.weights_sha256 and sidecar["val_accuracy"] == e.info["val_accuracy"]


def test_domain_features(domain_cache):
    _, e = domain_cache
    images = _images(4, 32)
    features = e(images)
    assert features.shape == (4, 128) and features.dtype == torch.float32
    torch.testing.assert_close(features, e.net.features(images.float() / 127.5 - 1))
    # another size is resized to the recipe's 32x32 (bilinear, antialias=False)
    big = torch.nn.functional.interpolate(images.float(), size=64, mode="nearest").to(torch.uint8)
    resized = torch.nn.functional.interpolate(big.float() / 127.5 - 1, size=32, mode="bilinear", antialias=False)
    torch.testing.assert_close(e(big), e.net.features(resized))
    with pytest.raises(ValueError, match="uint8"):
        e(images.float())


def test_domain_second_create_loads_from_cache(domain_cache, monkeypatch):
    root, first = domain_cache

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds the classifier")

    monkeypatch.setattr(ex, "train_domain_classifier", no_training)
    second = create_extractor("domain-mnist", cache_dir=root, recipe=TINY)
    assert second.weights_sha256 == first.weights_sha256 and second.info["cache_path"] == first.info["cache_path"]
    images = _images(2, 32)
    torch.testing.assert_close(second(images), first(images), rtol=0, atol=0)
    # a different recipe is a different cache entry: it would train
    with pytest.raises(AssertionError, match="retrained"):
        create_extractor("domain-mnist", cache_dir=root, recipe=DomainRecipe(epochs=1, limit=128, max_steps=4, batch_size=32))


def test_domain_altered_cache_entry_is_retrained(domain_cache, tmp_path, monkeypatch):
    _, e = domain_cache
    cached = Path(e.info["cache_path"])
    copy = tmp_path / "extractors" / cached.name
    copy.parent.mkdir()
    copy.write_bytes(cached.read_bytes()[:-4] + b"\0\0\0\0")  # no longer the file the sidecar hashed
    copy.with_suffix(".json").write_text(cached.with_suffix(".json").read_text())
    monkeypatch.setattr(ex, "train_domain_classifier", lambda *a: (_ for _ in ()).throw(AssertionError("retrained")))
    with pytest.raises(AssertionError, match="retrained"):
        create_extractor("domain-mnist", cache_dir=tmp_path, recipe=TINY)


def test_domain_training_is_deterministic(domain_cache, tmp_path, capsys):
    _, first = domain_cache
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    again = create_extractor("domain-mnist", cache_dir=tmp_path, recipe=TINY)
    said = capsys.readouterr().err  # the first run's pause has a reason on screen
    assert "training the FID-domain(mnist) classifier once on this machine" in said and again.info["cache_path"] in said
    create_extractor("domain-mnist", cache_dir=tmp_path, recipe=TINY)
    assert "training" not in capsys.readouterr().err  # read from the cache: nothing to say
    assert again.weights_sha256 == first.weights_sha256  # same bytes, metadata included
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads  # no global side effects


def test_domain_from_weights_file(domain_cache):
    _, e = domain_cache
    loaded = create_extractor("domain-mnist", weights=e.info["cache_path"])
    assert loaded.weights_sha256 == e.weights_sha256 and loaded.info["val_accuracy"] == e.info["val_accuracy"]
    torch.testing.assert_close(loaded(_images(2, 32)), e(_images(2, 32)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained on 'mnist'"):
        create_extractor("domain-shapes", weights=e.info["cache_path"])
    with pytest.raises(ValueError, match="trained with recipe"):
        create_extractor("domain-mnist", weights=e.info["cache_path"], recipe=DomainRecipe())


def test_domain_any_source_by_name(tmp_path):
    e = create_extractor("domain-shapes:48:20", cache_dir=tmp_path, recipe=DomainRecipe(epochs=1, batch_size=16))
    assert e.metric_name == "FID-domain(shapes:48:20)" and e.info["train_images"] == 48 and e.info["steps"] == 3
    assert e(_images(2, 256)).shape == (2, 128)
    assert "domain-shapes_48_20-" in e.info["cache_path"]


def test_domain_without_source_is_an_error():
    with pytest.raises(ValueError, match="domain-<source>"):
        create_extractor("domain-")


def test_domain_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTBENCH_CACHE", str(tmp_path))
    assert ex.default_cache_dir() == tmp_path
    monkeypatch.delenv("LATENTBENCH_CACHE")
    assert ex.default_cache_dir().parts[-2:] == (".cache", "latentbench")


# ---------------------------------------------------------------------------------------- dinov2-vitb14


@pytest.fixture(scope="module")
def dinov2_weights(tmp_path_factory):
    """Random DINOv2 ViT-B/14 weights saved as the hub's model.safetensors is (518x518 position embeddings)."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("dinov2") / "model.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("vit_base_patch14_dinov2", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_dinov2_missing_weights_says_where_to_put_them(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailable) as err:
        create_extractor("dinov2-vitb14")
    message = str(err.value)
    assert ex.DINOV2_HF_REPO in message and ex.DINOV2_URL in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in message


def test_dinov2_weights_found_in_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth"
    hub.parent.mkdir(parents=True)
    hub.touch()
    assert ex.find_dinov2_weights() == hub
    repo = tmp_path / "hf" / "models--timm--vit_base_patch14_dinov2.lvd142m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").touch()
    assert ex.find_dinov2_weights() == repo / "snapshots" / "abc123" / "model.safetensors"  # preferred


def test_dinov2_matches_timm_and_pil_pipeline(dinov2_weights, built):
    """Our loading and preprocessing against timm's own checkpoint loader and PIL's resize."""
    import timm

    path, ours = dinov2_weights, built("dinov2-vitb14")
    assert (ours.id, ours.dim, ours.metric_name) == ("dinov2-vitb14", 768, "FD-DINOv2")
    assert ours.weights_sha256 == sha256_file(path)

    images = _images(2, 32)
    pixels = ours.pixels(images)  # the resize is PIL's bicubic filter (dgm-eval resizes PIL images)
    pil = torch.stack([
        torch.from_numpy(np.array(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC))).permute(2, 0, 1)
        for im in images
    ])
    assert (pixels.int() - pil.int()).abs().max() <= 2 and (pixels != pil).float().mean() < 0.01

    ref = timm.create_model(ex.DINOV2_TIMM, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                            img_size=224, num_classes=0).eval()
    mean, std = torch.tensor(ex.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(ex.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.forward_features((pixels.float() / 255 - mean) / std)[:, 0]  # CLS token after the final norm
    features = ours(images)
    assert features.shape == (2, 768) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["missing", "folder", "cut short", "text"])
def test_domain_weights_file_that_is_not_one_is_named(domain_cache, tmp_path, kind):
    """--extractor_weights naming no file, a folder or a damaged file: one ValueError naming it (was safetensors'
    SafetensorError or an OSError 'No such device', a traceback)."""
    _, e = domain_cache
    path = tmp_path / "w.safetensors"
    if kind == "folder":
        path.mkdir()
    elif kind == "cut short":
        path.write_bytes(Path(e.info["cache_path"]).read_bytes()[:3000])
    elif kind == "text":
        path.write_text("not weights\n")
    said = {"missing": "does not exist", "folder": "is a folder"}.get(kind, "is not a readable safetensors file")
    with pytest.raises(ValueError, match=f"{path}.*{said}.*no weights file to use"):
        create_extractor("domain-mnist", weights=path)


def test_a_domain_classifier_of_one_class_is_refused(tmp_path):
    """A folder without class sub-folders is one class: its classifier's one logit gets no gradient, so it stayed at its
    random initialisation and FID-domain measured random features without a word (0.05 for two noise folders)."""
    for i in range(3):
        Image.fromarray(_images(1, 8, seed=i)[0].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match=f"extractor domain-imagefolder:{tmp_path} is a classifier of .* but it has one "
                                         "class .*: it would learn nothing and measure with random features"):
        create_extractor(f"domain-imagefolder:{tmp_path}", cache_dir=tmp_path / "cache", recipe=TINY)
    assert not (tmp_path / "cache").exists()
