"""The official MAETok state-dict converter, on state dicts built here with the official key names and shapes."""
from __future__ import annotations

import pytest
import torch

from latentbench.tokenizers import create_tokenizer
from latentbench.tokenizers.maetok import OFFICIAL_ARCH
from latentbench.tokenizers.maetok_convert import (
    AUX_NAMES,
    ConversionError,
    convert_official_state_dict,
    interleaved_to_half,
    is_official_state_dict,
)
from latentbench.tokenizers.vit import rope_mixed, unpatchify

SIZE = dict(resolution=32, patch_size=8, width=32, depth=2, heads=2, latent_tokens=8, latent_channels=4,
            decoder_width=48, decoder_depth=2, decoder_heads=4, aux_width=16, aux_depth=1, aux_heads=1)
HOG_DIM = 3 * 9 * 1  # patch 8, HOG cell 8


def _tokenizer(**kw):
    return create_tokenizer("maetok-smoke", **{**SIZE, **OFFICIAL_ARCH, **kw})


def _vit_blocks(prefix: str, depth: int, dim: int, movq_cond: int | None, layer_scale: bool) -> dict[str, tuple]:
    """Official (timm / MoVQBlockv2) block keys and shapes."""
    keys = {}
    for i in range(depth):
        b = f"{prefix}.model.blocks.{i}"
        keys |= {f"{b}.attn.qkv.weight": (3 * dim, dim), f"{b}.attn.qkv.bias": (3 * dim,), f"{b}.attn.proj.weight": (dim, dim),
                 f"{b}.attn.proj.bias": (dim,), f"{b}.mlp.fc1.weight": (4 * dim, dim), f"{b}.mlp.fc1.bias": (4 * dim,),
                 f"{b}.mlp.fc2.weight": (dim, 4 * dim), f"{b}.mlp.fc2.bias": (dim,)}
        if movq_cond is None:  # timm blocks: affine norms
            keys |= {f"{b}.norm1.weight": (dim,), f"{b}.norm1.bias": (dim,), f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,)}
        else:  # MoVQBlockv2: norms without affine, adaLN modulation from the latent
            keys |= {f"{b}.adaLN_modulation.1.weight": (4 * dim, movq_cond), f"{b}.adaLN_modulation.1.bias": (4 * dim,)}
        if layer_scale:
            keys |= {f"{b}.ls1.gamma": (dim,), f"{b}.ls2.gamma": (dim,)}
    return keys


def _query_decoder(prefix: str, depth: int, dim: int, heads: int, c: int, n: int, p: int, latent_tokens: int) -> dict[str, tuple]:
    keys = _vit_blocks(prefix, depth, dim, c, layer_scale=False)
    return keys | {f"{prefix}.mask_token": (1, 1, dim), f"{prefix}.latent_pos_embed": (1, latent_tokens, dim),
                   f"{prefix}.freqs": (2, depth, dim // 2), f"{prefix}.model.norm.adaLN_modulation.1.weight": (2 * dim, c),
                   f"{prefix}.model.norm.adaLN_modulation.1.bias": (2 * dim,),
                   f"{prefix}.model.patch_embed.proj.weight": (dim, 3, p, p), f"{prefix}.model.patch_embed.proj.bias": (dim,),
                   f"{prefix}.model.pos_embed": (1, 1 + n, dim)}  # timm's table keeps the class position


def official_state(aux=("hog", "dino"), seed: int = 0, dec_cls_token: bool = True,
                   widths: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """A MaskAEModel state dict (official key names and shapes) at the SIZE above; ``dec_cls_token`` as the official default;
    ``widths``: the auxiliary heads' output widths (default: HOG's, 24 for the teachers)."""
    widths = {"hog": HOG_DIM, "dino": 24, "clip": 24} | (widths or {})
    d, dd, c, p, n, lt = SIZE["width"], SIZE["decoder_width"], SIZE["latent_channels"], SIZE["patch_size"], 16, SIZE["latent_tokens"]
    shapes = _vit_blocks("encoder", SIZE["depth"], d, None, layer_scale=True) | {
        "encoder.model.patch_embed.proj.weight": (d, 3, p, p), "encoder.model.patch_embed.proj.bias": (d,),
        "encoder.model.cls_token": (1, 1, d), "encoder.model.pos_embed": (1, 1 + n, d),
        "encoder.model.norm.weight": (d,), "encoder.model.norm.bias": (d,),
        "encoder.latent_tokens": (1, lt, d), "encoder.latent_pos_embed": (1, lt, d), "encoder.mask_token": (1, 1, d),
        "encoder.freqs": (2, SIZE["depth"], d // 2),
        "quant_conv.weight": (c, d), "quant_conv.bias": (c,), "post_quant_conv.weight": (dd, c), "post_quant_conv.bias": (dd,),
        "decoder.to_pixel.model.weight": (3 * p * p, dd), "decoder.to_pixel.model.bias": (3 * p * p,),
        "repa_model.blocks.0.attn.qkv.weight": (12, 4), "projection.0.weight": (8, c),
    }
    shapes |= _query_decoder("decoder", SIZE["decoder_depth"], dd, SIZE["decoder_heads"], c, n, p, lt)
    if dec_cls_token:
        shapes["decoder.model.cls_token"] = (1, 1, dd)
    for name, out in widths.items():
        if name in aux:
            shapes |= _query_decoder(f"decoder_{name}", SIZE["aux_depth"], SIZE["aux_width"], 1, c, n, p, lt)
            shapes |= {f"post_quant_conv_{name}.weight": (SIZE["aux_width"], c), f"post_quant_conv_{name}.bias": (SIZE["aux_width"],),
                       f"to_pixel_{name}.weight": (out, SIZE["aux_width"]), f"to_pixel_{name}.bias": (out,)}
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_every_official_key_is_mapped_or_skipped_with_a_reason():
    state = official_state()
    assert is_official_state_dict(state)
    tok = _tokenizer()
    converted, report = convert_official_state_dict(state, tok)
    assert set(report.mapped) | set(report.skipped) == set(state)
    assert not set(report.mapped) & set(report.skipped)
    tok.load_state_dict(converted, strict=True)  # fills every parameter of ours
    assert set(converted) == set(tok.state_dict())
    assert "training-only" in report.skipped["repa_model.blocks.0.attn.qkv.weight"]
    assert "maetok-dinov2-vitl" in report.skipped["decoder_dino.mask_token"]
    assert "never read" in report.skipped["decoder.model.patch_embed.proj.weight"]
    # one mask token at every query position
    assert torch.equal(tok.decoder.queries[0], state["decoder.mask_token"][0].expand(16, -1))
    assert torch.equal(tok.encoder.blocks[1].ls2.gamma, state["encoder.model.blocks.1.ls2.gamma"])
    assert torch.equal(tok.to_latent.weight, state["quant_conv.weight"])


def test_buffers_and_teachers_of_a_real_official_state_dict_are_skipped_with_reasons():
    state = official_state()
    grid = {f"{m}.freqs_t_{a}": torch.arange(16.0) for m in ("encoder", "decoder", "decoder_hog", "decoder_dino") for a in "xy"}
    extra = grid | {"hog_generator.weight_x": torch.zeros(1, 1, 3, 3), "hog_generator.gaussian_kernel": torch.zeros(8, 8),
                    "clip_model.visual.proj": torch.zeros(4, 4)}
    converted, report = convert_official_state_dict(state | extra, _tokenizer())
    assert set(report.mapped) | set(report.skipped) == set(state) | set(extra)
    assert "RoPE position grid" in report.skipped["decoder.freqs_t_x"]
    assert "HOG target" in report.skipped["hog_generator.weight_x"] and "SigLIP" in report.skipped["clip_model.visual.proj"]
    # filled from the official training base size (256 px), whatever the resolution: never refused
    _, report = convert_official_state_dict(state | {"encoder.freqs_t_x": torch.arange(256.0)}, _tokenizer())
    assert "256 positions" in report.skipped["encoder.freqs_t_x"]


class _StubTeacher(torch.nn.Module):
    """Stands in for a 300M / 400M-parameter teacher: the tokenizer reads its width only."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim


def test_official_aux_decoders_load_into_the_official_teachers_targets(monkeypatch):
    """decoder_dino / decoder_clip -> the maetok-dinov2-vitl / maetok-siglip-so400m targets, whose widths (1024 / 1152,
    test_teachers.py checks them on timm's architectures) their heads emit; the ViT-B teachers' 768 do not fit."""
    import latentbench.tokenizers.maetok as maetok

    official = {"hog": HOG_DIM, "dino": 1024, "clip": 1152}
    dims = {"maetok-dinov2-vitl": 1024, "maetok-siglip-so400m": 1152, "dinov2-vitb14": 768, "siglip-b16": 768}
    monkeypatch.setattr(maetok, "create_teacher", lambda name, cache_dir=None: _StubTeacher(dims[name]))
    assert AUX_NAMES == {"hog": "hog", "dino": "maetok-dinov2-vitl", "clip": "maetok-siglip-so400m"}
    state = official_state(aux=("hog", "dino", "clip"), widths=official)
    tok = _tokenizer(aux_targets=("hog", "maetok-dinov2-vitl", "maetok-siglip-so400m"))
    converted, report = convert_official_state_dict(state, tok)
    tok.load_state_dict(converted, strict=True)
    assert report.mapped["to_pixel_dino.weight"] == "aux_decoders.maetok-dinov2-vitl.head.weight"
    assert report.mapped["to_pixel_clip.weight"] == "aux_decoders.maetok-siglip-so400m.head.weight"
    assert tok.aux_decoders["maetok-dinov2-vitl"].head.out_features == 1024
    assert tok.aux_decoders["maetok-siglip-so400m"].head.out_features == 1152
    # the ViT-B teachers' decoders are not the official ones: refused with their parameters named, never loaded misshapen
    with pytest.raises(ConversionError, match=r"no official key fills: \['aux_decoders\.dinov2-vitb14\.head\.bias'"):
        convert_official_state_dict(state, _tokenizer(aux_targets=("hog", "dinov2-vitb14", "siglip-b16")))


def test_the_pixel_decoders_class_token_is_loaded_and_read():
    """The official default (dec_cls_token=True) loads into maetok-b-128's architecture; a mismatch says what to build."""
    state = official_state()
    tok = _tokenizer()
    converted, report = convert_official_state_dict(state, tok)
    assert report.mapped["decoder.model.cls_token"] == "decoder.cls_token"
    tok.load_state_dict(converted, strict=True)
    tok.eval()
    z = torch.randn(2, SIZE["latent_tokens"], SIZE["latent_channels"])
    with torch.no_grad():
        before = tok.decode(z)
        tok.decoder.cls_token.add_(1.0)  # the token is in the decoder's sequence: it changes the pixels
        assert not torch.allclose(tok.decode(z), before)
    with pytest.raises(ConversionError, match=r"decoder.model.cls_token: .* build this tokenizer with decoder_cls_token=True"):
        convert_official_state_dict(state, _tokenizer(decoder_cls_token=False))
    without = official_state(dec_cls_token=False)
    with pytest.raises(ConversionError, match=r"decoder.cls_token.*build this tokenizer with decoder_cls_token=False"):
        convert_official_state_dict(without, _tokenizer())
    plain = _tokenizer(decoder_cls_token=False)
    plain.load_state_dict(convert_official_state_dict(without, plain)[0], strict=True)
    # an auxiliary decoder the tokenizer does not have is skipped whole, its class token too
    _, report = convert_official_state_dict(official_state(aux=("hog", "clip")) | {
        "decoder_clip.model.cls_token": torch.zeros(1, 1, 16)}, _tokenizer())  # built with the HOG target only
    assert "training-only" in report.skipped["decoder_clip.model.cls_token"]
    # the official default: auxiliary decoders with class tokens; the one this tokenizer keeps is skipped, not refused
    _, report = convert_official_state_dict(state | {"decoder_hog.model.cls_token": torch.zeros(1, 1, 16)}, _tokenizer())
    assert "reconstruction never reads it" in report.skipped["decoder_hog.model.cls_token"]


def test_unknown_missing_and_misshapen_keys_fail_with_the_keys_named():
    tok = _tokenizer()
    state = official_state()
    with pytest.raises(ConversionError, match="encoder.model.reg_token"):
        convert_official_state_dict(state | {"encoder.model.reg_token": torch.zeros(1, 4, 32)}, tok)
    partial = {k: v for k, v in state.items() if k != "encoder.model.norm.weight"}
    with pytest.raises(ConversionError, match="encoder.norm.weight"):
        convert_official_state_dict(partial, tok)
    wrong = state | {"encoder.model.pos_embed": torch.zeros(1, 65, 32)}  # a 64-patch grid: another resolution
    with pytest.raises(ConversionError, match="shapes differ"):
        convert_official_state_dict(wrong, tok)
    with pytest.raises(ConversionError, match="not built with"):  # official CLIP decoder, ours built without that target
        convert_official_state_dict(official_state(aux=("hog",)), create_tokenizer("maetok-smoke", **SIZE))


def test_pixel_head_matches_mae_unpatchify():
    state = official_state()
    tok = _tokenizer()
    tok.load_state_dict(convert_official_state_dict(state, tok)[0])
    h = torch.randn(2, 16, SIZE["decoder_width"])  # (B, N, D) decoder outputs on the 4x4 grid
    w, b, p = state["decoder.to_pixel.model.weight"], state["decoder.to_pixel.model.bias"], SIZE["patch_size"]
    official = (h @ w.T + b).reshape(2, 4, 4, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 32, 32)  # nhwpqc->nchpwq
    ours = unpatchify(tok.decoder.head(h), p, (4, 4))
    torch.testing.assert_close(ours, official)


def _official_rope(x: torch.Tensor, freqs: torch.Tensor, grid: tuple[int, int], heads: int) -> torch.Tensor:
    """The official RoPE-Mixed rotation: complex multiplication of interleaved pairs (B, h, N, d)."""
    t = torch.arange(grid[0] * grid[1], dtype=torch.float32)
    t_x, t_y = t % grid[1], torch.div(t, grid[1], rounding_mode="floor")
    fx = (t_x[:, None] @ freqs[0][None]).view(-1, heads, freqs.shape[1] // heads).permute(1, 0, 2)  # (h, N, d/2)
    fy = (t_y[:, None] @ freqs[1][None]).view(-1, heads, freqs.shape[1] // heads).permute(1, 0, 2)
    cis = torch.polar(torch.ones_like(fx), fx + fy)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis).flatten(-2)


def test_rope_permutation_gives_the_official_attention_logits():
    heads, d, grid = 2, 16, (3, 4)
    g = torch.Generator().manual_seed(1)
    freqs = torch.randn(2, heads * d // 2, generator=g) * 0.3  # one block's official frequencies
    q, k = torch.randn(2, 1, heads, 12, d, generator=g).unbind(0)  # (1, h, N, d) official layout
    qo, ko = _official_rope(q, freqs, grid, heads), _official_rope(k, freqs, grid, heads)
    order = interleaved_to_half(heads, d).reshape(heads, d) - torch.arange(heads)[:, None] * d  # per-head channel order
    qp = torch.stack([q[:, h][..., order[h]] for h in range(heads)], dim=1)
    kp = torch.stack([k[:, h][..., order[h]] for h in range(heads)], dim=1)
    cos, sin = rope_mixed(freqs, grid, heads)  # (h, N, d) rotate-half tables
    from latentbench.tokenizers.vit import apply_rope

    torch.testing.assert_close(apply_rope(qp, cos, sin) @ apply_rope(kp, cos, sin).transpose(-1, -2), qo @ ko.transpose(-1, -2))


def test_converted_weights_run_and_own_checkpoints_pass_through():
    tok = _tokenizer().eval()
    converted, _ = convert_official_state_dict(official_state(), tok)
    assert tok.convert_state_dict(converted) is converted  # not official: left as it is
    tok.load_state_dict(tok.convert_state_dict(official_state()))
    with torch.no_grad():
        z = tok.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
        assert z.shape == (2, 8, 4) and tok.decode(z).shape == (2, 3, 32, 32)
