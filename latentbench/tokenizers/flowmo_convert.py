"""Convert the released FlowMo checkpoints (kylesargent/FlowMo: ``flowmo_lo.pth``, ``flowmo_hi.pth``).

A released file is ``{"total_steps", "model_ema_state_dict", "model_state_dict"}``; the paper's
numbers come from the EMA weights. Its state dict is that of ``flowmo.models.FlowMo``: two Flux
transformers ``encoder.*`` and ``decoder.*`` (``img_in``, ``txt_in``, ``time_in``,
``double_blocks.{i}.{img,txt}_{mod,attn,mlp}``, ``final_layer_{img,txt}``).

What changes on the way (the values are otherwise copied):

* patch layout: Flux flattens a patch as (row, col, channel), ``vit.PatchEmbed`` and
  ``vit.unpatchify`` as (channel, row, col): the patch input and pixel output weights are permuted;
* RoPE layout: Flux rotates channel pairs (2j, 2j + 1), ``vit.apply_rope`` pairs (j, j + d/2):
  query and key rows of ``qkv`` and the q/k RMS-norm scales are permuted within each head;
* the encoder's latent input is ``txt_in`` applied to zeros, i.e. its bias: it becomes
  ``encoder.latent_queries`` (FlowMo's shared query; every row of it for per-token queries).

Keys that the official forward pass never uses are dropped and listed in ``UNUSED`` with the
reason; any other key the converter does not know raises ``KeyError`` naming it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentbench.tokenizers.flowmo import FlowMo
from latentbench.weights import load_checkpoint

# Official keys with no effect on the official model's output (regex -> why).
UNUSED = {
    r"encoder\.txt_in\.weight": "the encoder's latent input is all zeros, so only txt_in.bias reaches the output",
    r"encoder\.time_in\..*": "the encoder is called with timesteps=None (no time embedding)",
    r"encoder\.double_blocks\.\d+\.(img|txt)_mod\.lin\..*": "without a time embedding the encoder's adaLN is the identity",
    r"encoder\.final_layer_txt\.adaLN_modulation\..*": "without a time embedding the encoder's output adaLN is skipped",
    r"encoder\.final_layer_img\..*": "the encoder's image-stream output is discarded",
    r"decoder\.final_layer_txt\..*": "the decoder's latent-stream output is discarded",
}

# Official entropy group size (``codebook_size_for_entropy``) by bits per token (README launch commands).
ENTROPY_GROUP = {18: 9, 56: 14}

_STREAM = {"img": "img", "txt": "lat"}
_BLOCK_PARTS = {  # official suffix after "{img,txt}_" -> ours after "{img,lat}."
    "attn.qkv.weight": "qkv.weight", "attn.qkv.bias": "qkv.bias",
    "attn.norm.query_norm.scale": "q_norm.weight", "attn.norm.key_norm.scale": "k_norm.weight",
    "attn.proj.weight": "proj.weight", "attn.proj.bias": "proj.bias",
    "mlp.0.weight": "mlp.0.weight", "mlp.0.bias": "mlp.0.bias", "mlp.2.weight": "mlp.2.weight", "mlp.2.bias": "mlp.2.bias",
    "mod.lin.weight": "mod.lin.weight", "mod.lin.bias": "mod.lin.bias",
}
_BLOCK_KEY = re.compile(r"(encoder|decoder)\.double_blocks\.(\d+)\.(img|txt)_(.+)")


# ---- layout permutations -------------------------------------------------------------------------

def rope_pair_permutation(head_dim: int) -> Tensor:
    """Channel order taking Flux's interleaved RoPE pairs to the rotate-half layout: [0, 2, ..., 1, 3, ...]."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_qk(qkv: Tensor, head_dim: int) -> Tensor:
    """qkv weight (3D, D) or bias (3D,): permute the query and key channels within each head."""
    perm = rope_pair_permutation(head_dim)
    q, k, v = qkv.reshape(3, -1, head_dim, *qkv.shape[1:]).unbind(0)  # 3 x (H, d_h, ...)
    return torch.stack([q[:, perm], k[:, perm], v]).reshape(qkv.shape)


def _patch_in(weight: Tensor, patch: int) -> Tensor:
    """Linear over (row, col, channel) patches (D, p*p*3) -> conv weight (D, 3, p, p)."""
    return weight.reshape(weight.shape[0], patch, patch, 3).permute(0, 3, 1, 2).contiguous()


def _pixels_out(t: Tensor, patch: int) -> Tensor:
    """Output rows in (row, col, channel) order (p*p*3, ...) -> (channel, row, col) order."""
    return t.reshape(patch, patch, 3, *t.shape[1:]).permute(2, 0, 1, *range(3, t.ndim + 2)).reshape(t.shape)


def is_official_state_dict(state: dict[str, Tensor]) -> bool:
    """Whether a state dict has the official code's key names (Flux ``double_blocks``)."""
    return any(re.match(r"(module\.)?(_orig_mod\.)?(encoder|decoder)\.double_blocks\.", k) for k in state)


# ---- config inference --------------------------------------------------------------------------

def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop DDP / torch.compile prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def official_config(state: dict[str, Tensor], resolution: int = 256, latent_tokens: int = 256,
                    entropy_group: int | None = None) -> dict[str, Any]:
    """``FlowMo`` keyword arguments for an official state dict (sizes read from its shapes).

    Resolution and the number of latent tokens are not stored in the weights (RoPE positions
    only): pass them when they differ from the released models' 256 and 256.
    """
    state = _strip(state)
    need = ["encoder.img_in.weight", "decoder.img_in.weight", "encoder.final_layer_txt.linear.weight",
            "encoder.double_blocks.0.img_attn.norm.query_norm.scale", "decoder.double_blocks.0.img_attn.norm.query_norm.scale",
            "decoder.double_blocks.0.img_mlp.0.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise KeyError(f"not an official FlowMo state dict: missing {missing}")
    patch = round((state["encoder.img_in.weight"].shape[1] // 3) ** 0.5)
    bits = state["encoder.final_layer_txt.linear.weight"].shape[0]
    if "encoder.double_blocks.0.img_attn.qkv.bias" not in state:
        raise KeyError("official FlowMo without qkv biases is not modelled (every released size has them)")
    group = entropy_group or ENTROPY_GROUP.get(bits)
    if group is None:
        raise ValueError(f"no known entropy group size for {bits} bits per token; pass entropy_group")
    cfg = {"resolution": resolution, "patch_size": patch, "latent_tokens": latent_tokens, "bits": bits,
           "entropy_group": group, "qk_scale": "mup"}
    for part, prefix in (("encoder", ""), ("decoder", "decoder_")):
        width = state[f"{part}.img_in.weight"].shape[0]
        head_dim = state[f"{part}.double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        depth = 1 + max(int(m.group(2)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(1) == part)
        cfg.update({f"{prefix}width": width, f"{prefix}depth": depth, f"{prefix}heads": width // head_dim})
    cfg["mlp_ratio"] = state["decoder.double_blocks.0.img_mlp.0.weight"].shape[0] / cfg["decoder_width"]
    return cfg


# ---- conversion --------------------------------------------------------------------------------

def convert_official_state_dict(state: dict[str, Tensor], latent_tokens: int = 256, shared_query: bool = True
                                ) -> dict[str, Tensor]:
    """Official FlowMo state dict -> ``FlowMo`` state dict (``shared_query`` as ``FlowMo(shared_latent_query=)``;
    False repeats the official query in each of ``latent_tokens`` rows).

    Raises:
        KeyError: naming every official key that is neither converted nor known to be unused.
    """
    state = _strip(state)
    out: dict[str, Tensor] = {}
    unknown = []
    patch = round((state["encoder.img_in.weight"].shape[1] // 3) ** 0.5)
    head_dims = {part: state[f"{part}.double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
                 for part in ("encoder", "decoder")}
    for key, value in state.items():
        if any(re.fullmatch(pattern, key) for pattern in UNUSED):
            continue
        if (m := _BLOCK_KEY.fullmatch(key)) and m.group(4) in _BLOCK_PARTS:
            part, i, stream, rest = m.groups()
            hd = head_dims[part]
            if rest.startswith("attn.qkv"):
                value = _permute_qk(value, hd)
            elif rest.startswith("attn.norm"):
                value = value[rope_pair_permutation(hd)]
            out[f"{part}.trunk.blocks.{i}.{_STREAM[stream]}.{_BLOCK_PARTS[rest]}"] = value
            continue
        mapped = _convert_top_level(key, value, patch, 1 if shared_query else latent_tokens)
        if mapped is None:
            unknown.append(key)
        else:
            out[mapped[0]] = mapped[1]
    if unknown:
        raise KeyError(
            f"{len(unknown)} official FlowMo key(s) have no place in latentbench's FlowMo: {sorted(unknown)[:20]}. "
            "Known unused keys are dropped (flowmo_convert.UNUSED); these are parts that are not modelled "
            "(e.g. a KL or no-op quantizer variant, extra conditioning) or not FlowMo weights at all."
        )
    return {k: v.contiguous() for k, v in out.items()}


def _convert_top_level(key: str, value: Tensor, patch: int, query_rows: int) -> tuple[str, Tensor] | None:
    """(our key, value) for an official key outside the blocks, None when it has no counterpart."""
    simple = {
        "encoder.img_in.bias": "encoder.patch_embed.proj.bias",
        "encoder.final_layer_txt.linear.weight": "encoder.head.linear.weight",
        "encoder.final_layer_txt.linear.bias": "encoder.head.linear.bias",
        "decoder.img_in.bias": "decoder.patch_embed.proj.bias",
        "decoder.txt_in.weight": "decoder.latent_in.weight",
        "decoder.txt_in.bias": "decoder.latent_in.bias",
        "decoder.time_in.in_layer.weight": "decoder.time_embed.mlp.0.weight",
        "decoder.time_in.in_layer.bias": "decoder.time_embed.mlp.0.bias",
        "decoder.time_in.out_layer.weight": "decoder.time_embed.mlp.2.weight",
        "decoder.time_in.out_layer.bias": "decoder.time_embed.mlp.2.bias",
        "decoder.final_layer_img.adaLN_modulation.1.weight": "decoder.head.ada.weight",
        "decoder.final_layer_img.adaLN_modulation.1.bias": "decoder.head.ada.bias",
    }
    if key in simple:
        return simple[key], value
    if key in ("encoder.img_in.weight", "decoder.img_in.weight"):
        return key.replace("img_in", "patch_embed.proj"), _patch_in(value, patch)
    if key in ("decoder.final_layer_img.linear.weight", "decoder.final_layer_img.linear.bias"):
        return key.replace("final_layer_img", "head"), _pixels_out(value, patch)
    if key == "encoder.txt_in.bias":
        return "encoder.latent_queries", value.reshape(1, 1, -1).expand(1, query_rows, -1).clone()
    return None


def flowmo_from_official(state: dict[str, Tensor], resolution: int = 256, latent_tokens: int = 256,
                         entropy_group: int | None = None, **overrides: Any) -> FlowMo:
    """Build a ``FlowMo`` of the checkpoint's size and load the converted weights (strict)."""
    cfg = {**official_config(state, resolution, latent_tokens, entropy_group), **overrides}
    model = FlowMo(**cfg)
    converted = convert_official_state_dict(state, cfg["latent_tokens"], cfg.get("shared_latent_query", True))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise KeyError(f"the official state dict lacks weights FlowMo needs: {missing[:20]}")
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in converted.items() if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"official weights do not fit the inferred FlowMo size: {wrong[:10]}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_official_flowmo(path: str | Path, ema: bool = True, trust: bool = False, resolution: int = 256,
                         latent_tokens: int = 256, **overrides: Any) -> FlowMo:
    """Load ``flowmo_lo.pth`` / ``flowmo_hi.pth``; ``ema`` picks ``model_ema_state_dict`` (the paper's weights)."""
    ckpt = load_checkpoint(path, trust=trust)
    key = "model_ema_state_dict" if ema else "model_state_dict"
    state = ckpt.get(key, ckpt) if isinstance(ckpt, dict) else ckpt
    if not any(k.startswith(("encoder.", "module.encoder.")) for k in state):
        raise KeyError(f"{path} holds no FlowMo weights under {key!r} (keys: {sorted(ckpt)[:5]})")
    return flowmo_from_official(state, resolution, latent_tokens, **overrides)


__all__ = [
    "ENTROPY_GROUP", "UNUSED", "convert_official_state_dict", "flowmo_from_official", "is_official_state_dict",
    "load_official_flowmo", "official_config", "rope_pair_permutation",
]
