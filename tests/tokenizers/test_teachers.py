"""Teachers: per-patch features on the tokenizer's grid, equal to a direct computation through the
network they wrap, frozen, and honest about missing pretrained weights."""
import json

import pytest
import torch
import torch.nn.functional as F

from latentbench.benchmark.extractors import (
    DINOV2_HF_REPO,
    DINOV2_URL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DomainRecipe,
)
from latentbench.tokenizers import teachers as tt
from latentbench.tokenizers.teachers import (
    TEACHERS,
    create_teacher,
    normalize_targets,
    resample_to_grid,
    teacher_names,
)
from latentbench.weights import WeightsUnavailable, sha256_file

TINY = DomainRecipe(epochs=1, limit=128, max_steps=3, batch_size=32)  # seconds, not a useful classifier
VITS = {"dinov2-vitb14": "vit_base_patch14_dinov2", "siglip-b16": "vit_base_patch16_siglip_224"}
# the official MAETok teachers: name -> (class, timm model, dim, native patch); 300M / 400M parameters
OFFICIAL = {"maetok-dinov2-vitl": (tt.MAETokDinoV2LTeacher, "vit_large_patch14_dinov2.lvd142m", 1024, 14),
            "maetok-siglip-so400m": (tt.MAETokSigLIPTeacher, "vit_so400m_patch14_siglip_gap_224.webli", 1152, 14)}


def _images(n, size, seed=0):
    """Float images in [-1, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """name -> a random-weights safetensors file in timm's layout (DINOv2 at its 518x518 hub size)."""
    import timm
    from safetensors.torch import save_file

    files = {}

    def make(name):
        if name not in files:
            files[name] = tmp_path_factory.mktemp(name) / "model.safetensors"
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = timm.create_model(VITS[name], pretrained=False, num_classes=0)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(files[name]))
        return files[name]

    return make


@pytest.fixture(scope="module")
def built(vit_weights, tmp_path_factory):
    """name -> that teacher, built once per module (random weights files for the pretrained ones)."""
    cache, teachers = tmp_path_factory.mktemp("cache"), {}

    def build(name):
        if name not in teachers:
            extra = {"weights": vit_weights(name)} if name in VITS else {"cache_dir": cache, "recipe": TINY}
            teachers[name] = create_teacher(name, **extra)
        return teachers[name]

    return build


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_the_teachers():
    assert {"dinov2-vitb14", "siglip-b16", "maetok-dinov2-vitl", "maetok-siglip-so400m", "domain-mnist",
            "domain-shapes"} <= set(teacher_names())
    assert teacher_names() == TEACHERS.names() and all(TEACHERS.help(n) for n in teacher_names())


def test_unknown_name_is_an_error_that_lists_the_names():
    with pytest.raises(KeyError, match="unknown teacher 'dinov2'.*dinov2-vitb14.*siglip-b16"):
        create_teacher("dinov2")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in VITS else n
                                  for n in teacher_names() if n not in OFFICIAL])  # OFFICIAL: test_official_maetok_teacher_*
@pytest.mark.parametrize("grid", [(8, 8), (2, 2), (3, 5)])  # enlarged, area-averaged, mixed
def test_teacher_contract(name, grid, built):
    """Every registered teacher: its facts, (B, gh*gw, dim) float32 targets, frozen, deterministic."""
    t = built(name)
    assert isinstance(t, tt.Teacher) and t.name == name and len(t.weights_sha256) == 64
    assert t.weights_sha256 == sha256_file(t.weights_path)
    json.dumps(t.describe())
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    x = _images(2, 32).requires_grad_(True)
    out = t(x, grid)
    assert out.shape == (2, grid[0] * grid[1], t.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not out.requires_grad
    torch.testing.assert_close(t(x, grid), out, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, 32, 32), torch.zeros(2, 1, 32, 32)])
def test_input_must_be_float_bchw(bad, built):
    with pytest.raises(ValueError, match=r"float images in \[-1, 1\] of shape \(B, 3, H, W\)"):
        built("domain-shapes")(bad, (4, 4))


@pytest.mark.parametrize("grid", [(0, 4), (4,), (4.0, 4), 4])
def test_grid_must_be_two_positive_ints(grid, built):
    with pytest.raises(ValueError, match="patch grid"):
        built("domain-shapes")(_images(1, 32), grid)


# ---------------------------------------------------------------------------------------- resampling


def test_resample_identity_area_and_bilinear():
    fmap = torch.randn(2, 5, 4, 6)
    tokens = resample_to_grid(fmap, (4, 6))
    torch.testing.assert_close(tokens, fmap.permute(0, 2, 3, 1).reshape(2, 24, 5), rtol=0, atol=0)  # row-major
    torch.testing.assert_close(resample_to_grid(fmap, (2, 3))[:, 0], fmap[:, :, :2, :2].mean((2, 3)))  # area average
    up = F.interpolate(fmap, size=(8, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resample_to_grid(fmap, (8, 6)), up.flatten(2).transpose(1, 2))


def test_normalize_targets_is_layer_norm_without_affine():
    t = torch.randn(2, 7, 16) * 3 + 1
    mean, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(normalize_targets(t), (t - mean) / torch.sqrt(var + 1e-6))
    assert normalize_targets(t.double()).dtype == torch.float32


# ---------------------------------------------------------------------------------------- domain-*


def test_domain_teacher_facts(built):
    t = built("domain-shapes")
    assert (t.dim, t.native_grid, t.resolution) == (64, (4, 4), 32)
    again = create_teacher("domain-shapes", weights=t.weights_path)  # the cached file, no training
    assert again.weights_sha256 == t.weights_sha256
    assert t.describe()["info"]["recipe"]["max_steps"] == 3 and "64, 4, 4" in t.preprocessing


def test_domain_features_equal_the_conv_body(built):
    """The classifier's conv body before its flatten, read independently from the weights file."""
    from latentbench.benchmark.extractors import load_domain_classifier

    t = built("domain-shapes")
    net, _ = load_domain_classifier(t.weights_path)
    assert isinstance(net.body[-1], torch.nn.Flatten)
    x = _images(3, 32)
    with torch.no_grad():
        fmap = net.body[:-1](x)  # (3, 64, 4, 4)
    torch.testing.assert_close(t(x, (4, 4)), fmap.flatten(2).transpose(1, 2), rtol=0, atol=0)
    torch.testing.assert_close(t(x, (8, 8)), F.interpolate(fmap, size=8, mode="bilinear").flatten(2).transpose(1, 2))
    torch.testing.assert_close(t(x, (2, 2)), F.avg_pool2d(fmap, 2).flatten(2).transpose(1, 2))
    big = _images(3, 64)  # another size is resized (bilinear, antialias=False) to the recipe's 32x32
    with torch.no_grad():
        expected = net.body[:-1](F.interpolate(big, size=32, mode="bilinear", antialias=False))
    torch.testing.assert_close(t(big, (4, 4)), expected.flatten(2).transpose(1, 2))


def test_any_domain_source_by_name(tmp_path):
    rng = torch.random.get_rng_state()
    t = create_teacher("domain-shapes:48:20", cache_dir=tmp_path, recipe=DomainRecipe(epochs=1, batch_size=16))
    assert t.name == "domain-shapes:48:20" and t.info["train_images"] == 48
    assert t(_images(2, 64), (16, 16)).shape == (2, 256, 64)
    assert torch.equal(torch.random.get_rng_state(), rng)
    with pytest.raises(ValueError, match="domain-<source>"):
        create_teacher("domain-")


# ---------------------------------------------------------------------------------------- pretrained ViTs


def test_dinov2_missing_weights_says_where_to_put_them(empty_caches):
    with pytest.raises(WeightsUnavailable) as err:
        create_teacher("dinov2-vitb14")
    message = str(err.value)
    assert "dinov2-vitb14 teacher" in message and DINOV2_HF_REPO in message and DINOV2_URL in message
    assert str(empty_caches / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in message
    assert "domain-" in message and "random" in message


def test_siglip_missing_weights_says_where_to_put_them(empty_caches):
    with pytest.raises(WeightsUnavailable, match=r"siglip-b16 teacher.*huggingface-cli download timm/vit_base_patch16_siglip_224\.webli"):
        create_teacher("siglip-b16")
    with pytest.raises(WeightsUnavailable, match="nope.safetensors does not exist"):
        create_teacher("siglip-b16", weights=empty_caches / "nope.safetensors")


def test_siglip_weights_found_in_the_hf_cache(empty_caches):
    repo = empty_caches / "hf" / "models--timm--vit_base_patch16_siglip_224.webli"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").touch()
    assert tt.hf_cached_file(tt.SIGLIP_HF_REPO, tt.SIGLIP_HF_FILES) == repo / "snapshots" / "abc123" / "model.safetensors"


def _timm_reference(model_name, path, mean, std, x, size=224, **create):
    """Patch-token map (B, D, h, w) of ``x`` through timm's own checkpoint loader and a plain resize
    (none when ``x`` is ``size`` already); ``create``: more ``timm.create_model`` arguments (``patch_size``)."""
    import timm

    ref = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                            img_size=size, num_classes=0, **create).eval()
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pixels = (x + 1) / 2
    if x.shape[-1] != size:
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)  # PIL's bicubic
    with torch.no_grad():
        tokens = ref.forward_features((pixels - mean) / std)[:, ref.num_prefix_tokens:]  # (B, h*w, D)
    h, w = ref.patch_embed.grid_size
    return tokens.transpose(1, 2).reshape(len(x), -1, h, w)


def _check_against(teacher, fmap, x):
    """Teacher output = the reference map on its native grid, area-averaged (2x2) and bilinearly enlarged (20x20)."""
    tokens = fmap.flatten(2).transpose(1, 2)  # (B, h*w, D)
    torch.testing.assert_close(teacher(x, tuple(fmap.shape[-2:])), tokens, rtol=0, atol=1e-5)
    pooled = F.adaptive_avg_pool2d(fmap, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(teacher(x, (2, 2)), pooled, rtol=0, atol=1e-5)
    up = F.interpolate(fmap, size=(20, 20), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(teacher(x, (20, 20)), up, rtol=0, atol=1e-5)


class TinyViTTeacher(tt.TimmViTTeacher):
    """The ViT teachers' code on timm's 0.3M-parameter ``test_vit`` (patch 16, one CLS token)."""

    timm_model, size, mean, std = "test_vit", 224, IMAGENET_MEAN, IMAGENET_STD


def test_timm_vit_teacher_matches_timm(tmp_path):
    """Loading (pos-embed resampled at load, strict), preprocessing and prefix-token dropping, fast."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    net = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=160)  # 10x10 positions in the file
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    rng = torch.random.get_rng_state()
    ours = TinyViTTeacher("tiny", path)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert (ours.dim, ours.native_grid, ours.weights_sha256) == (64, (14, 14), sha256_file(path))
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    x = _images(2, 64)
    _check_against(ours, _timm_reference("test_vit", path, IMAGENET_MEAN, IMAGENET_STD, x), x)
    json.dumps(ours.describe())


@pytest.mark.slow
@pytest.mark.parametrize("name, grid", [("dinov2-vitb14", (16, 16)), ("siglip-b16", (14, 14))])
def test_vit_teacher_matches_timm(name, grid, vit_weights, built):
    """The registered ViT-B teachers against timm's own checkpoint loader: patch tokens, resampled."""
    path, ours = vit_weights(name), built(name)
    assert (ours.dim, ours.native_grid) == (768, grid) and ours.weights_sha256 == sha256_file(path)
    x = _images(1, 64)
    _check_against(ours, _timm_reference(ours.timm_model, path, ours.mean, ours.std, x), x)


def test_siglip_input_is_the_minus_one_one_image():
    mean, std = torch.tensor(tt.SigLIPTeacher.mean).view(1, 3, 1, 1), torch.tensor(tt.SigLIPTeacher.std).view(1, 3, 1, 1)
    x = _images(1, 8)
    torch.testing.assert_close(((x + 1) / 2 - mean) / std, x)


# ---------------------------------------------------------------------------------------- the official MAETok teachers


class TinyPatchViTTeacher(tt.TimmViTTeacher):
    """``test_vit`` (native patch 16) rebuilt with an 8x8 patch at 128x128, as the official teachers' /14 -> 16."""

    timm_model, size, patch_size, mean, std = "test_vit", 128, 8, IMAGENET_MEAN, IMAGENET_STD


def test_patch_size_override_matches_timms_loader(tmp_path):
    """The patch embedding is resampled at load exactly as timm.create_model(..., pretrained=True, patch_size=...)."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    net = timm.create_model("test_vit", pretrained=False, num_classes=0)  # 16x16 patches, 14x14 positions in the file
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    ours = TinyPatchViTTeacher("tiny-p8", path)
    assert ours.net.patch_embed.proj.weight.shape == (64, 3, 8, 8) and ours.native_grid == (16, 16)
    assert ours.info["patch_size"] == 8 and "patch embedding resampled to 8x8 at load" in ours.preprocessing
    x = _images(2, 128)  # the teacher's own size: no resize, as the official teachers on 256x256 images
    fmap = _timm_reference("test_vit", path, IMAGENET_MEAN, IMAGENET_STD, x, size=128, patch_size=8)
    assert fmap.shape == (2, 64, 16, 16)
    _check_against(ours, fmap, x)
    # without the override a teacher is built as before: timm's own patch, nothing new in its record
    plain = TinyViTTeacher("tiny", path)
    assert plain.patch_size is None and plain.net.patch_embed.proj.weight.shape[-1] == 16
    assert "patch_size" not in plain.info and "resampled to" not in plain.preprocessing


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_maetok_teacher_facts(name):
    """What the official code builds (create_model(name, img_size=256, patch_size=16)), read without any weights:
    timm's architecture on the meta device, and timm's pretrained cfg."""
    import timm

    cls, timm_model, dim, native_patch = OFFICIAL[name]
    assert TEACHERS.get(name) is cls and cls.timm_model == timm_model
    assert (cls.size, cls.patch_size) == (256, 16)
    assert (cls.mean, cls.std) == (IMAGENET_MEAN, IMAGENET_STD)  # the official code's, for SigLIP too
    with torch.device("meta"):  # shapes only: no 300M / 400M-parameter initialisation
        net = timm.create_model(timm_model, pretrained=False, img_size=cls.size, patch_size=cls.patch_size, num_classes=0)
        native = timm.create_model(timm_model, pretrained=False, num_classes=0)
    assert net.embed_dim == dim and tuple(net.patch_embed.grid_size) == (16, 16)  # the tokenizer's grid at 256 / 16
    assert net.patch_embed.proj.weight.shape[-2:] == (16, 16) and native.patch_embed.proj.weight.shape[-1] == native_patch
    assert net.num_prefix_tokens == (1 if "dinov2" in name else 0)  # DINOv2's class token; SigLIP gap: none
    cfg = net.pretrained_cfg
    assert cfg["hf_hub_id"] == f"timm/{timm_model}"
    if "siglip" in name:  # SigLIP's own statistics, which the official code (and this teacher) do not use
        assert (cfg["tag"], tuple(cfg["mean"]), tuple(cfg["std"])) == ("webli", (0.5,) * 3, (0.5,) * 3)
        assert tt.MAETOK_SIGLIP_HF_REPO == cfg["hf_hub_id"]
    else:
        assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (IMAGENET_MEAN, IMAGENET_STD)
        assert tt.MAETOK_DINO_HF_REPO == cfg["hf_hub_id"] and tt.MAETOK_DINO_URL == cfg["url"]


def test_official_maetok_teachers_missing_weights_say_where_to_put_them(empty_caches):
    with pytest.raises(WeightsUnavailable) as err:
        create_teacher("maetok-dinov2-vitl")
    message = str(err.value)
    assert "maetok-dinov2-vitl teacher" in message and "DINOv2 ViT-L/14" in message
    assert "huggingface-cli download timm/vit_large_patch14_dinov2.lvd142m model.safetensors" in message
    assert tt.MAETOK_DINO_URL in message
    assert str(empty_caches / "torch" / "hub" / "checkpoints" / "dinov2_vitl14_pretrain.pth") in message
    assert "domain-" in message and "random" in message
    with pytest.raises(WeightsUnavailable, match=r"maetok-siglip-so400m teacher.*SigLIP so400m/14.*"
                                                 r"huggingface-cli download timm/vit_so400m_patch14_siglip_gap_224\.webli"):
        create_teacher("maetok-siglip-so400m")
    for name in OFFICIAL:
        with pytest.raises(WeightsUnavailable, match="nope.safetensors does not exist"):
            create_teacher(name, weights=empty_caches / "nope.safetensors")


def _hf_cache_file(root, repo, filename="model.safetensors"):
    """An (empty) file where the Hugging Face cache under ``root`` keeps ``filename`` of ``repo``."""
    folder = root / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / filename).touch()
    return folder / "snapshots" / "abc123" / filename


class _Loaded(Exception):
    """Raised by a stand-in for load_timm_vit: the teacher found its weights and asked for this network."""


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_maetok_teachers_find_their_weights(name, empty_caches, monkeypatch):
    """The HF cache (and for DINOv2, torch hub's), and the network asked of load_timm_vit: 256 px, patch 16."""
    def load(model_name, img_size, path, patch_size=None):
        raise _Loaded(model_name, img_size, path, patch_size)

    monkeypatch.setattr(tt, "load_timm_vit", load)
    cls, timm_model, _, _ = OFFICIAL[name]
    if "dinov2" in name:  # Meta's file in torch hub's cache is found when the HF cache has none
        hub = tt.torch_hub_file(tt.MAETOK_DINO_URL)
        hub.parent.mkdir(parents=True)
        hub.touch()
        with pytest.raises(_Loaded) as got:
            create_teacher(name)
        assert got.value.args == (timm_model, 256, hub, 16)
    cached = _hf_cache_file(empty_caches, f"timm/{timm_model}")
    with pytest.raises(_Loaded) as got:
        create_teacher(name)
    assert got.value.args == (timm_model, 256, cached, 16)


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFICIAL)
def test_official_maetok_teacher_matches_timm(name, tmp_path):
    """The real architectures with random weights in timm's layout at their native patch and size, against
    timm's own loader asked as the official code asks (img_size=256, patch_size=16); 256x256 images, no resize."""
    import timm
    from safetensors.torch import save_file

    cls, timm_model, dim, _ = OFFICIAL[name]
    path = tmp_path / "model.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model(timm_model, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    del net
    ours = create_teacher(name, weights=path)
    assert (ours.dim, ours.native_grid, ours.weights_sha256) == (dim, (16, 16), sha256_file(path))
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    json.dumps(ours.describe())
    x = _images(1, 256)
    fmap = _timm_reference(timm_model, path, IMAGENET_MEAN, IMAGENET_STD, x, size=256, patch_size=16)
    torch.testing.assert_close(ours(x, (16, 16)), fmap.flatten(2).transpose(1, 2), rtol=0, atol=1e-4)
