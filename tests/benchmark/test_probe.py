"""Linear probe: separable data, chance on random labels, determinism, input checks, sklearn cross-check."""
from dataclasses import asdict

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from latentbench.benchmark.probe import ProbeRecipe, linear_probe, pool, probe_features, standardize

SHAPES = {"2d": (4, 8, 8), "1d": (16, 8)}  # (C, h, w) latents and (L, C) tokens


def _clusters(shape, n, num_classes=10, spread=3.0, seed=0):
    """Latents whose every position holds the class's channel vector plus unit Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    channels = shape[0] if len(shape) == 3 else shape[1]
    centres = spread * torch.randn(num_classes, channels, generator=g)
    y = torch.arange(n) % num_classes
    mean = centres[y].view(n, channels, 1, 1) if len(shape) == 3 else centres[y].view(n, 1, channels)
    return mean + torch.randn(n, *shape, generator=g), y


def _split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_separable_clusters_are_learned(kind, pooling):
    x, y = _clusters(SHAPES[kind], 1000)
    out = linear_probe(*_split(x, y, 600), num_classes=10, pooling=pooling)
    assert out["top1"] > 0.95
    per_sample = torch.Size(SHAPES[kind]).numel()
    channels = SHAPES[kind][0] if kind == "2d" else SHAPES[kind][1]
    assert out["feature_dim"] == (per_sample if pooling == "flatten" else channels)
    assert (out["n_train"], out["n_test"], out["pooling"]) == (600, 400, pooling)
    assert out["recipe"] == asdict(ProbeRecipe())


def test_random_labels_are_at_chance():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1000, 4, 8, 8, generator=g), torch.randint(0, 10, (1000,), generator=g)
    out = linear_probe(*_split(x, y, 600), num_classes=10)
    assert out["top1"] < 0.3
    assert out["train_top1"] > 0.5  # 256 features, 600 samples: it memorises, and the test split shows it


def test_deterministic_and_leaves_global_state_alone():
    x, y = _clusters(SHAPES["2d"], 600, spread=0.3)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = linear_probe(*_split(x, y, 400), num_classes=10)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert linear_probe(*_split(x, y, 400), num_classes=10) == first
    other_seed = linear_probe(*_split(x, y, 400), num_classes=10, recipe=ProbeRecipe(seed=1))
    assert other_seed["recipe"]["seed"] == 1 and abs(other_seed["top1"] - first["top1"]) < 0.05


def test_pooling_and_standardisation():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert pool(x, "flatten").shape == (2, 12)
    torch.testing.assert_close(pool(x, "mean"), x.mean((2, 3)))
    tokens = torch.randn(2, 5, 3)
    torch.testing.assert_close(pool(tokens, "mean"), tokens.mean(1))
    train, test = standardize(torch.tensor([[1.0, 5.0], [3.0, 5.0]]), torch.tensor([[2.0, 7.0]]), eps=1e-6)
    torch.testing.assert_close(train, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-5, rtol=0)
    assert test[0, 0].item() == pytest.approx(0.0)


@pytest.mark.parametrize("change, match", [
    (lambda a: {**a, "train_y": a["train_y"][:-1]}, "differ in N"),
    (lambda a: {**a, "test_y": a["test_y"] + 10}, r"labels must be in \[0, 10\)"),
    (lambda a: {**a, "train_y": a["train_y"] - 1}, r"labels must be in \[0, 10\)"),
    (lambda a: {**a, "train_y": a["train_y"].float()}, "1D integer"),
    (lambda a: {**a, "pooling": "max"}, "pooling must be one of"),
    (lambda a: {**a, "test_x": a["test_x"][..., :4]}, "differ in shape per sample"),
    (lambda a: {**a, "train_x": a["train_x"].flatten(1)}, r"\(N, C, h, w\) or \(N, L, C\)"),
    (lambda a: {**a, "num_classes": 1}, "at least 2"),
    (lambda a: {**a, "train_x": a["train_x"] * float("nan")}, "NaN or Inf"),
])
def test_bad_inputs_raise(change, match):
    x, y = _clusters(SHAPES["2d"], 40)
    args = dict(zip(("train_x", "train_y", "test_x", "test_y"), _split(x, y, 30), strict=True), num_classes=10, pooling="flatten")
    with pytest.raises(ValueError, match=match):
        linear_probe(**change(args))


def test_agrees_with_sklearn_logistic_regression():
    """Overlapping clusters, where neither classifier is near 1.0: the two recipes land close."""
    x, y = _clusters((4, 4, 4), 3000, spread=0.25, seed=2)
    train_x, train_y, test_x, test_y = _split(x, y, 2000)
    ours = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)["top1"]
    train_f, test_f = standardize(pool(train_x, "flatten"), pool(test_x, "flatten"), eps=1e-6)
    sk = LogisticRegression(solver="lbfgs", max_iter=1000).fit(train_f.numpy(), train_y.numpy())  # multinomial
    theirs = sk.score(test_f.numpy(), test_y.numpy())
    assert 0.3 < theirs < 0.9 and 0.3 < ours < 0.9
    assert ours == pytest.approx(theirs, abs=0.05)


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_features_pooled_batch_by_batch_give_the_same_probe(kind, pooling):
    """The bench keeps only each batch's pooled features: the result is linear_probe's, exactly."""
    x, y = _clusters(SHAPES[kind], 300, spread=0.5)
    train_x, train_y, test_x, test_y = _split(x, y, 200)
    batched = [torch.cat([pool(part, pooling) for part in t.split(7)]) for t in (train_x, test_x)]
    assert torch.equal(batched[0], pool(train_x, pooling))
    assert probe_features(batched[0], train_y, batched[1], test_y, num_classes=10, pooling=pooling) == \
        linear_probe(train_x, train_y, test_x, test_y, num_classes=10, pooling=pooling)


def test_features_of_the_wrong_shape_are_refused():
    f, y = torch.randn(20, 5), torch.arange(20) % 2
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        probe_features(f[:, :, None], y, f, y, num_classes=2, pooling="mean")
    with pytest.raises(ValueError, match="differ in dimension: 5 vs 4"):
        probe_features(f, y, f[:, :4], y, num_classes=2, pooling="mean")
    with pytest.raises(ValueError, match="pooling must be one of"):
        probe_features(f, y, f, y, num_classes=2, pooling="max")
