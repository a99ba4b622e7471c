"""DiT velocity networks: shapes, adaLN-Zero, label dropout, RAE's width warning, registered sizes, a tiny overfit."""
import warnings

import pytest
import torch

from latentbench.generators import dit
from latentbench.generators.dit import DiT
from latentbench.generators.registry import GENERATORS

TINY = {"width": 32, "depth": 1, "heads": 2}
INPUTS = {  # name: (input_shape, patch_size)
    "2d-p1": ((4, 8, 8), 1),
    "2d-p2": ((4, 8, 8), 2),
    "1d": ((16, 8), 1),
}
LAYERS = {  # name: (mlp, norm, qk_norm)
    "dit": ("gelu", "layernorm", False),
    "lightningdit": ("swiglu", "rmsnorm", True),
}
NUM_CLASSES = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks gain nothing from a second thread, and on a shared 2-core machine the
    threads' barriers turn a 0.4 s test into tens of seconds whenever the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(shape: tuple[int, ...], b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, *shape, generator=g), torch.rand(b, generator=g),
            torch.randint(NUM_CLASSES, (b,), generator=g))


def _randomized(net: DiT, seed: int = 0) -> DiT:
    """Every parameter drawn at random: a net past its zero initialisation, whose output depends on all inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


# ---- shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("head_width", [0, 64])
@pytest.mark.parametrize("layers", list(LAYERS))
@pytest.mark.parametrize("pos", dit.POSITIONS)
@pytest.mark.parametrize("inputs", list(INPUTS))
def test_output_has_the_input_shape(inputs, pos, layers, head_width):
    shape, patch = INPUTS[inputs]
    mlp, norm, qk_norm = LAYERS[layers]
    net = _randomized(DiT(shape, NUM_CLASSES, **TINY, patch_size=patch, pos=pos, mlp=mlp, norm=norm, qk_norm=qk_norm,
                          head_width=head_width))
    x, t, y = _batch(shape)
    out = net(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_runs_under_bf16_autocast(inputs):
    shape, patch = INPUTS[inputs]
    net = DiT(shape, NUM_CLASSES, **TINY, patch_size=patch, pos="rope", mlp="swiglu", norm="rmsnorm", qk_norm=True,
              head_width=64)
    x, t, y = _batch(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _randomized(net)(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---- adaLN-Zero -------------------------------------------------------------------------------

@pytest.mark.parametrize("head_width", [0, 64])
@pytest.mark.parametrize("inputs", list(INPUTS))
def test_output_is_zero_at_initialisation(inputs, head_width):
    shape, patch = INPUTS[inputs]
    net = DiT(shape, NUM_CLASSES, **TINY, patch_size=patch, head_width=head_width)
    x, t, y = _batch(shape)
    assert net(x, t, y).abs().max() == 0


@pytest.mark.parametrize("head_width", [0, 64])
def test_gradient_reaches_the_input_embedding_after_one_step(head_width):
    # At initialisation the zero output projection stops every gradient but its own (adaLN-Zero);
    # one optimizer step opens the residual path down to the input embedding.
    net = DiT((4, 8, 8), NUM_CLASSES, **TINY, class_dropout=0.0, head_width=head_width)
    out_layer, embed = (net.out, net.x_embed) if head_width == 0 else (net.head.out, net.head.x_embed)
    x, t, y = _batch((4, 8, 8))
    target = torch.randn_like(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (net(x, t, y) - target).pow(2).mean().backward()
    assert out_layer.linear.weight.grad.abs().sum() > 0
    assert embed.weight.grad.abs().sum() == 0
    opt.step()
    opt.zero_grad()
    (net(x, t, y) - target).pow(2).mean().backward()
    assert embed.weight.grad.abs().sum() > 0


# ---- labels -----------------------------------------------------------------------------------

def _labelled(class_dropout: float) -> tuple[DiT, tuple[torch.Tensor, ...], torch.Tensor]:
    net = _randomized(DiT((4, 8, 8), NUM_CLASSES, **TINY, class_dropout=class_dropout))
    x, t, y = _batch((4, 8, 8))
    null = torch.full_like(y, NUM_CLASSES)
    with torch.no_grad():
        uncond = net.eval()(x, t, null)
    return net, (x, t, y), uncond


def test_eval_mode_keeps_the_labels():
    net, (x, t, y), uncond = _labelled(class_dropout=1.0)
    with torch.no_grad():
        out = net.eval()(x, t, y)
    assert not torch.allclose(out, uncond)


def test_dropout_one_replaces_every_label_by_the_null_label_in_training():
    net, (x, t, y), uncond = _labelled(class_dropout=1.0)
    with torch.no_grad():
        out = net.train()(x, t, y)
    torch.testing.assert_close(out, uncond)


def test_dropout_zero_keeps_every_label_in_training():
    net, (x, t, y), uncond = _labelled(class_dropout=0.0)
    with torch.no_grad():
        out_train, out_eval = net.train()(x, t, y), net.eval()(x, t, y)
    torch.testing.assert_close(out_train, out_eval)
    assert not torch.allclose(out_train, uncond)


def test_dropout_rate_matches_class_dropout():
    net = DiT((4, 8, 8), NUM_CLASSES, **TINY, class_dropout=0.3).train()
    torch.manual_seed(0)
    y = torch.randint(NUM_CLASSES, (20_000,))
    dropped = net.drop_labels(y) == NUM_CLASSES
    assert abs(dropped.float().mean().item() - 0.3) < 0.02


# ---- RAE's width bound ------------------------------------------------------------------------

@pytest.mark.parametrize("shape, patch, width, head_width, narrow", [
    ((16, 4, 4), 1, 8, 0, (8, 16)),  # 2D: token dim C
    ((16, 4, 4), 1, 16, 0, None),
    ((4, 8, 8), 2, 8, 0, (8, 16)),  # 2D: token dim C * p^2
    ((4, 8, 8), 2, 16, 0, None),
    ((12, 16), 1, 8, 0, (8, 16)),  # 1D: token dim C
    ((12, 16), 1, 32, 0, None),
    ((16, 4, 4), 1, 8, 32, None),  # a wide DiT^DH head is what the bound asks for
    ((16, 4, 4), 1, 32, 8, (8, 16)),
])
def test_width_below_the_token_dimension_warns(shape, patch, width, head_width, narrow):
    kw = {"width": width, "depth": 1, "heads": 2, "patch_size": patch, "head_width": head_width}
    if narrow is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            DiT(shape, NUM_CLASSES, **kw)
        return
    with pytest.warns(UserWarning, match=rf"{narrow[0]} is below the token dimension {narrow[1]}.*RAE"):
        DiT(shape, NUM_CLASSES, **kw)


# ---- bad configurations -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, kw, match", [
    ((4, 7, 8), {"patch_size": 2}, "not divisible by patch_size 2"),
    ((16, 8), {"patch_size": 2}, "take patch_size 1"),
    ((4, 8, 8), {"patch_size": 0}, "patch_size must be >= 1"),
    ((4,), {}, r"input_shape must be \(C, h, w\)"),
    ((1, 4, 8, 8), {}, r"input_shape must be \(C, h, w\)"),
    ((4, 8, 8), {"heads": 3}, "not divisible by 3 heads"),
    ((4, 8, 8), {"mlp": "relu"}, "mlp must be one of"),
    ((4, 8, 8), {"norm": "batchnorm"}, "norm must be one of"),
    ((4, 8, 8), {"pos": "alibi"}, "pos must be one of"),
    ((4, 8, 8), {"class_dropout": 1.5}, r"class_dropout must be in \[0, 1\]"),
])
def test_bad_configurations_raise(shape, kw, match):
    with pytest.raises(ValueError, match=match):
        DiT(shape, NUM_CLASSES, **{**TINY, **kw})


def test_a_batch_of_the_wrong_shape_raises():
    net = DiT((4, 8, 8), NUM_CLASSES, **TINY)
    with pytest.raises(ValueError, match=r"built for latents \(4, 8, 8\)"):
        net(*_batch((4, 16, 16)))


# ---- registered sizes -------------------------------------------------------------------------

# name: (input_shape, expected parameters): DiT Table 1 (XL/2 675M, B/2 130M), LightningDiT-XL/1
# 675M on VA-VAE's 32 x 16 x 16, RAE's DiT^DH-XL 839M on DINOv2's 768 x 16 x 16. RAE quotes no
# size for DiT^DH-S; 183M of its parameters are blocks (12 x 18 x 384^2 + 2 x 18 x 2048^2).
PAPER_SIZES = {
    "dit-xl-2": ((4, 32, 32), 675e6),
    "sit-xl-2": ((4, 32, 32), 675e6),
    "lightningdit-xl-1": ((32, 16, 16), 675e6),
    "dit-dh-xl": ((768, 16, 16), 839e6),
    "dit-b-2": ((4, 32, 32), 130e6),
    "dit-dh-s": ((768, 16, 16), 196e6),
}
CPU_SIZES = {  # name: latents of the ci protocol (SD-VAE, RAE, MAETok at 32 px)
    "dit-ci": [(4, 8, 8), (128, 8, 8), (32, 8)],
    "dit-smoke": [(4, 4, 4), (8, 6)],
}
DIT_NAMES = [n for n in GENERATORS.names() if GENERATORS.get(n).__module__ == dit.__name__]


def test_every_registered_dit_size_is_tested():
    assert sorted(DIT_NAMES) == sorted({*PAPER_SIZES, *CPU_SIZES})
    assert all(GENERATORS.help(n) for n in DIT_NAMES)


@pytest.mark.parametrize("name", list(PAPER_SIZES))
def test_paper_sizes_have_their_parameter_counts(name):
    shape, expected = PAPER_SIZES[name]
    with torch.device("meta"):
        net = GENERATORS.create(name, input_shape=shape, num_classes=1000)
    info = net.describe()
    assert abs(info["params"] / expected - 1) < 0.02, info
    assert info["input_shape"] == list(shape)


def test_lightningdit_xl_1_has_the_official_layers():
    # hustvl/LightningDiT, configs/lightningdit_xl_vavae_f16d32.yaml (and every released config): use_qknorm false,
    # with SwiGLU, RMSNorm and RoPE ("if you are encountering NaN loss issues, we recommend enabling it")
    with torch.device("meta"):
        net = GENERATORS.create("lightningdit-xl-1", input_shape=(32, 16, 16), num_classes=1000)
    info = net.describe()
    assert (info["mlp"], info["norm"], info["qk_norm"]) == ("swiglu", "rmsnorm", False)
    assert all(block.attn.q_norm is None and block.attn.k_norm is None for block in net.blocks)


@pytest.mark.parametrize("shape", [(4, 4, 4), (6, 8)])
def test_lightningdit_adds_a_sincos_table_and_rotates_by_rope_of_base_10000(shape):
    # LightningDiT (models/lightningdit.py) always adds its frozen 2D sin-cos pos_embed and, with use_rope, rotates
    # queries and keys by VisionRotaryEmbeddingFast(theta=10000); the paper size's layout on a small net
    from latentbench.tokenizers.mmdit import rope_axes
    from latentbench.tokenizers.rae_encoders import sincos_2d
    from latentbench.tokenizers.vit import rope_2d, sincos_1d

    net = GENERATORS.create("lightningdit-xl-1", input_shape=shape, num_classes=NUM_CLASSES, width=32, depth=1, heads=2)
    grid, head_dim = net.grid, 16
    table = sincos_1d(grid[1], 32) if len(shape) == 2 else sincos_2d(grid, 32)
    cos, sin = (rope_axes(torch.arange(grid[1], dtype=torch.float32)[:, None], (head_dim,), 10_000.0) if len(shape) == 2
                else rope_2d(grid, head_dim, base=10_000.0))
    assert net.pos.table is not None and torch.equal(net.pos.table[0], table)
    assert torch.allclose(net.pos.rope()[0], cos) and torch.allclose(net.pos.rope()[1], sin)
    x, t, y = _batch(shape)
    assert _randomized(net)(x, t, y).shape == x.shape


@pytest.mark.parametrize("name", ["dit-dh-xl", "dit-dh-s"])
def test_dit_dh_has_the_official_layers(name):
    # RAE's DiTwDDTHead configs (configs/stage2/training/ImageNet256/DiTDH-{XL,S}_DINOv2-B.yaml): use_swiglu, use_rmsnorm,
    # use_rope (theta 10000) and use_pos_embed on the backbone, use_qknorm false; the head has RoPE and no pos table
    # (x_pos_embed None), and num_heads [.., 16]
    with torch.device("meta"):
        full = GENERATORS.create(name, input_shape=(768, 16, 16), num_classes=1000)
    assert full.head.blocks[0].attn.heads == 16
    net = GENERATORS.create(name, input_shape=(8, 4, 4), num_classes=NUM_CLASSES, width=32, depth=1, heads=2, head_width=64)
    info = net.describe()
    assert (info["mlp"], info["norm"], info["pos"], info["qk_norm"]) == ("swiglu", "rmsnorm", "sincos+rope", False)
    assert info["rope_base"] == 10_000.0 and net.pos.table is not None and net.pos.rope() is not None
    assert net.head.pos.table is None and net.head.pos.rope() is not None
    block = net.head.blocks[0]
    assert isinstance(block.norm1, dit.RmsNorm) and block.attn.q_norm is None and block.attn.heads == 16
    x, t, y = _batch((8, 4, 4))
    assert _randomized(net)(x, t, y).shape == x.shape


@pytest.mark.parametrize("name, shape", [(n, s) for n, shapes in CPU_SIZES.items() for s in shapes])
def test_cpu_sizes_build_and_run(name, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every ci latent fits the width bound
        net = GENERATORS.create(name, input_shape=shape, num_classes=NUM_CLASSES)
    x, t, y = _batch(shape, b=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x, t, y).shape == x.shape


def test_describe_names_the_architecture():
    net = GENERATORS.create("dit-smoke", input_shape=(4, 8, 8), num_classes=NUM_CLASSES, head_width=64)
    info = net.describe()
    assert info["class"] == "DiT" and info["width"] == 32 and info["depth"] == 1 and info["heads"] == 2
    assert info["patch"] == 1 and info["head"] == "64x2" and info["mlp"] == "gelu" and info["pos"] == "sincos"
    assert info["params"] == sum(p.numel() for p in net.parameters())


# ---- it learns --------------------------------------------------------------------------------

def test_a_tiny_dit_overfits_four_latents():
    torch.manual_seed(0)
    net = DiT((4, 4, 4), NUM_CLASSES, **TINY, class_dropout=0.0)
    x, t, y = _batch((4, 4, 4), b=4)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (net(x, t, y) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]
