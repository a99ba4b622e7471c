"""LPIPS against the lpips package on the same uint8-rounded images; input checks; missing weights."""
import lpips
import pytest
import torch

from latentbench.benchmark import perceptual
from latentbench.benchmark.perceptual import LPIPS, lpips_status
from latentbench.weights import WeightsUnavailable

pytestmark = pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # torchvision on lpips' call


@pytest.fixture(scope="module")
def alex():
    """lpips v0.1 with its shipped linear layers on a seeded random AlexNet (pnet_rand: nothing downloaded)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)


def _pair(n=6, size=32, noise=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.nn.functional.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear") * 2 - 1
    fake = (real + noise * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    return real, fake


def _rounded(x):
    """The uint8-rounded image back in [-1, 1], written out independently of the code under test."""
    return ((x.double() + 1) * 127.5).round().clamp(0, 255).float() / 127.5 - 1


def test_pnet_rand_builds_offline(monkeypatch, tmp_path, alex):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    assert not any(tmp_path.iterdir())  # no download attempted into the hub cache
    assert alex.pnet_rand and alex.version == "0.1"


@pytest.fixture(scope="module")
def vgg():
    """As ``alex`` with the VGG-16 backbone (the FlowMo paper's LPIPS-VGG)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)


@pytest.mark.parametrize("net,size", [("alex", 32), ("alex", 64), ("vgg", 32)])
def test_matches_lpips_package_per_image(request, net, size):
    model = request.getfixturevalue(net)
    real, fake = _pair(size=size)
    metric = LPIPS(net, model=model)
    ours = metric.per_image(real, fake)
    with torch.no_grad():
        ref = model(_rounded(real), _rounded(fake)).flatten()
    assert ours.shape == (6,) and (ref > 0).all()
    torch.testing.assert_close(ours.double(), ref.double(), atol=1e-6, rtol=0)
    metric.update(real, fake)
    assert metric.compute().dtype == torch.float64
    assert metric.compute().item() == pytest.approx(ref.double().mean().item(), abs=1e-6)
    assert metric.net == net and metric.higher_is_better is False


def test_lpips_sees_the_uint8_image(alex):
    q = _rounded(_pair(n=3)[0])
    within_a_level = (q + 0.3 / 127.5).clamp(-1, 1)  # rounds back to the same uint8 image
    assert LPIPS(model=alex).per_image(q, within_a_level).abs().max().item() == 0.0
    with torch.no_grad():
        assert alex(q, within_a_level).min().item() > 0  # the raw floats would score a difference


def test_autocast_does_not_lower_precision(alex):
    real, fake = _pair(n=2)
    metric = LPIPS(model=alex)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = metric.per_image(real, fake)
    torch.testing.assert_close(under_autocast, metric.per_image(real, fake), atol=1e-7, rtol=0)


def test_independent_of_batching(alex):
    real, fake = _pair(n=10)
    whole, split = LPIPS(model=alex), LPIPS(model=alex)
    whole.update(real, fake)
    for i in range(0, 10, 3):
        split.update(real[i:i + 3], fake[i:i + 3])
    assert split.count.item() == 10
    assert whole.compute().item() == pytest.approx(split.compute().item(), abs=1e-6)


def test_network_is_a_frozen_submodule_not_a_state(alex):
    metric = LPIPS(model=alex)
    assert set(metric._defaults) == {"total", "count"}
    assert dict(metric.named_children())["model"] is alex
    metric.train()
    assert metric.training and not alex.training  # dropout in lpips' linear layers stays off
    assert not any(p.requires_grad for p in alex.parameters())
    real, fake = _pair(n=2)
    assert torch.equal(metric.per_image(real, fake), metric.per_image(real, fake))


def test_zero_one_images_are_refused(alex):
    real, fake = _pair(n=4)
    metric = LPIPS(model=alex)
    with pytest.raises(ValueError, match=r"look like \[0, 1\] images: pass x \* 2 - 1"):
        metric.update((real + 1) / 2, (fake + 1) / 2)
    metric.update(real, (fake + 1) / 2)  # one side in [0, 1] is a legitimate (bright) [-1, 1] image
    metric.update(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))  # constant grey proves nothing
    assert int(metric.count) == 5 and torch.isfinite(metric.compute())  # both batches were measured


def test_uint8_images_are_taken_as_they_are(alex):
    """The suite's callers pass uint8: same values as the floats, and no [0, 1] guess to trip."""
    real, fake = _pair(n=3)
    as_uint8 = [((x.double() + 1) * 127.5).round().to(torch.uint8) for x in (real, fake)]
    torch.testing.assert_close(LPIPS(model=alex).per_image(*as_uint8), LPIPS(model=alex).per_image(real, fake), rtol=0, atol=0)
    bright = [(x.abs() * 0.9 + 0.05) for x in (real, fake)]  # bright [-1, 1] images: every value in [0, 1]
    with pytest.raises(ValueError, match=r"look like \[0, 1\] images"):  # as floats, indistinguishable from [0, 1] ones
        LPIPS(model=alex).update(*bright)
    metric = LPIPS(model=alex)
    metric.update(*[((x.double() + 1) * 127.5).round().to(torch.uint8) for x in bright])
    assert metric.result()["n"] == 3


@pytest.mark.parametrize("case, match", [
    ("over", r"must be in \[-1, 1\], got values in"),
    ("under", r"must be in \[-1, 1\], got values in"),
    ("nan", "NaN or Inf"),
    ("inf", "NaN or Inf"),
    ("int64", "must be uint8 images or floats"),
    ("mixed", "share one dtype"),
    ("shape", "one shape"),
    ("channels", "3 channels"),
    ("small", r"LPIPS-alex needs images of at least 31x31 px .* got \(30, 40\)"),
])
def test_bad_inputs_raise(alex, case, match):
    real, fake = _pair(n=2)
    if case == "over":
        fake = fake * 1.01 + 0.01
    elif case == "under":
        real = real.clone()
        real[0, 0, 0, 0] = -1.002
    elif case in ("nan", "inf"):
        fake = fake.clone()
        fake[1, 2, 3, 4] = float(case)
    elif case == "int64":
        real, fake = ((real + 1) * 127.5).long(), ((fake + 1) * 127.5).long()
    elif case == "mixed":
        real = ((real + 1) * 127.5).to(torch.uint8)
    elif case == "small":  # AlexNet's pooling leaves nothing of a 30-px side: a clear error, not a RuntimeError
        real, fake = _pair(n=2, size=40)
        real, fake = real[..., :30, :], fake[..., :30, :]
    elif case == "shape":
        fake = fake[..., :16, :16]
    elif case == "channels":
        real, fake = real[:, :1], fake[:, :1]
    with pytest.raises(ValueError, match=match):
        LPIPS(model=alex).update(real, fake)


def test_small_overshoot_is_tolerated(alex):
    """Within rounding of [-1, 1], as a decoder's output may be: measured as the clamped image would be."""
    real, fake = _pair(n=2)
    overshoot, clamped = LPIPS(model=alex), LPIPS(model=alex)
    overshoot.update(real, (fake * 1.0005).clamp(-1.0005, 1.0005))
    clamped.update(real, (fake * 1.0005).clamp(-1, 1))
    assert torch.isfinite(overshoot.compute()) and torch.equal(overshoot.compute(), clamped.compute())


def test_injected_model_must_match_net(alex):
    with pytest.raises(ValueError, match="expected LPIPS-vgg"):
        LPIPS(net="vgg", model=alex)


@pytest.mark.parametrize("net, file", [("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")])
def test_missing_backbone_weights_are_reported(monkeypatch, tmp_path, net, file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match=file.replace(".", r"\.")):
        LPIPS(net=net)
    status = lpips_status(net)
    assert status.startswith(f"unavailable: LPIPS-{net} needs") and file in status


def test_status_when_weights_present(monkeypatch, tmp_path):
    monkeypatch.setattr(perceptual, "require_lpips_weights", lambda net: tmp_path / "w.pth")
    assert lpips_status("alex") == "lpips-alex"
    assert lpips_status("vgg") == "lpips-vgg"
