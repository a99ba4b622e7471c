"""Official MAETok checkpoints -> ``latentbench.tokenizers.maetok.MAETok`` state dicts.

The key names and layouts are those of the official code (Hhhhhhao/continuous_tokenizer,
``MaskAEModel``): a timm ViT encoder under ``encoder.model.*`` with ``encoder.latent_tokens``,
``encoder.latent_pos_embed``, ``encoder.mask_token`` and RoPE-Mixed ``encoder.freqs``;
``quant_conv`` / ``post_quant_conv`` around the latent; a MoVQ ViT decoder under
``decoder.model.*`` with ``decoder.mask_token``, ``decoder.latent_pos_embed``, ``decoder.freqs``
and ``decoder.to_pixel.model``; auxiliary decoders ``decoder_{hog,dino,clip}`` with their own
``post_quant_conv_*`` / ``to_pixel_*`` (``AUX_NAMES``: they load into the aux decoders of the
targets ``hog``, ``maetok-dinov2-vitl`` and ``maetok-siglip-so400m``, whose widths, 108, 1024
and 1152, their heads emit; a tokenizer built without one of these targets skips its decoder); the training-only REPA teacher ``repa_model.*`` with
its head ``projection.*``, SigLIP teacher ``clip_model.*`` and HOG filters ``hog_generator.*``;
and RoPE-Mixed's position grids ``*.freqs_t_x`` / ``*.freqs_t_y`` (buffers).

Two layouts differ and are permuted, not just renamed:

- RoPE: the official attention rotates interleaved channel pairs (2j, 2j+1) (complex
  multiplication); ours rotates (j, j + d/2) (rotate-half). The query and key rows of every
  ``qkv`` weight are permuted within each head so that pair j lands on (j, j + d/2); q.k is
  unchanged for every token, rotated or not.
- Pixels: the official ``to_pixel`` linear emits each patch as (p, p, C) (MAE's unpatchify);
  ours as (C, p, p). The output rows are permuted.

The official decoder's image queries are one ``mask_token`` at every position (positions
come from RoPE only); ours are a per-position table, which receives that token at every
position. Keys the official forward never reads (the decoders' unused timm patch embedding
and position table), buffers recomputed here (the RoPE grids: the official forward also
recomputes them when their length does not fit the image), and training-only parts (the
teachers, auxiliary decoders for targets it lacks, auxiliary decoders' class tokens) are
reported as skipped, each with its reason; any other key is an error. The pixel decoder's
class token (``dec_cls_token``, the official default) maps onto ``decoder.cls_token`` of a
tokenizer built with ``decoder_cls_token=True`` (maetok-b-128's default); a mismatch either
way is an error that says which to build. Not verified against the released weights
themselves (no network here): the tests build state dicts with the official names and shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# official auxiliary decoder suffix -> this suite's aux target name: the teachers the official code
# trains against (its decoders' heads emit their widths, 1024 and 1152; maetok-b-128's targets)
AUX_NAMES = {"hog": "hog", "dino": "maetok-dinov2-vitl", "clip": "maetok-siglip-so400m"}
_BLOCK = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias", "attn.qkv.weight": "attn.qkv.weight", "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight", "attn.proj.bias": "attn.proj.bias", "mlp.fc1.weight": "mlp.0.weight",
    "mlp.fc1.bias": "mlp.0.bias", "mlp.fc2.weight": "mlp.2.weight", "mlp.fc2.bias": "mlp.2.bias",
    "ls1.gamma": "ls1.gamma", "ls2.gamma": "ls2.gamma",
    "adaLN_modulation.1.weight": "modulation.adaLN_modulation.1.weight",
    "adaLN_modulation.1.bias": "modulation.adaLN_modulation.1.bias",
}
_UNUSED_DECODER_PARTS = ("model.patch_embed.", "model.pos_embed")
# training-only parts of the official MaskAEModel: its REPA teacher and head, its SigLIP teacher,
# and the fixed filters of its HOG target (recomputed here: tokenizers.hog)
_TRAINING_ONLY = {"repa_model.": "training-only REPA teacher (not part of the tokenizer)",
                  "projection.": "training-only REPA projection head (not part of the tokenizer)",
                  "clip_model.": "training-only SigLIP teacher of the CLIP target (not part of the tokenizer)",
                  "hog_generator.": "fixed filters of the training-only HOG target (recomputed: tokenizers.hog)"}


class ConversionError(ValueError):
    """An official state dict that does not fit the tokenizer; the message lists the keys."""


@dataclass
class ConversionReport:
    """What ``convert_official_state_dict`` did with every official key."""

    mapped: dict[str, str] = field(default_factory=dict)  # official key -> our key
    skipped: dict[str, str] = field(default_factory=dict)  # official key -> reason


def is_official_state_dict(state: dict[str, Tensor]) -> bool:
    """True when the keys are the official code's (``encoder.model.*`` and ``quant_conv.*``)."""
    return any(k.startswith("encoder.model.") for k in state) and any(k.startswith("quant_conv.") for k in state)


def interleaved_to_half(heads: int, head_dim: int) -> Tensor:
    """Row order (heads * head_dim,) taking interleaved RoPE pairs to the rotate-half layout, per head."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # (d,)
    return (torch.arange(heads)[:, None] * head_dim + within).reshape(-1)  # (h * d,)


def _permute_qkv(t: Tensor, heads: int) -> Tensor:
    """Permute the q and k rows of a qkv weight (3D, D) or bias (3D,); v is left as it is."""
    dim = t.shape[0] // 3
    order = interleaved_to_half(heads, dim // heads)
    q, k, v = t.split(dim)
    return torch.cat([q[order], k[order], v])


def _pixel_rows(patch_size: int, channels: int = 3) -> Tensor:
    """Row order taking (p, p, C) patch vectors to (C, p, p)."""
    return torch.arange(patch_size * patch_size * channels).reshape(patch_size, patch_size, channels).permute(2, 0, 1).reshape(-1)


def _decoder_map(ours: str, rest: str) -> str | None:
    """Our key for ``<official>.<rest>`` inside one of the query decoders, or None if unknown."""
    if rest == "mask_token":
        return f"{ours}.queries"
    if rest == "latent_pos_embed":
        return f"{ours}.latent_pos.table"
    if rest == "freqs":
        return f"{ours}.transformer.rope_freqs"
    if rest.startswith("model.norm."):
        tail = rest[len("model.norm."):]
        return f"{ours}.transformer.norm_modulation.{tail}" if tail.startswith("adaLN") else f"{ours}.transformer.norm.{tail}"
    m = re.fullmatch(r"model\.blocks\.(\d+)\.(.+)", rest)
    if m and m.group(2) in _BLOCK:
        return f"{ours}.transformer.blocks.{m.group(1)}.{_BLOCK[m.group(2)]}"
    return None


def convert_official_state_dict(state: dict[str, Tensor], tokenizer: nn.Module) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map an official MAETok state dict onto ``tokenizer`` (a ``MAETok``).

    Returns:
        (state dict for ``tokenizer.load_state_dict(..., strict=True)``, report of every key).

    Raises:
        ConversionError: keys the mapping does not know, shapes that differ, or parameters of
            the tokenizer that no official key fills; the message lists them.
    """
    ours = tokenizer.state_dict()
    heads, patch = tokenizer.heads, tokenizer.patch_size
    out: dict[str, Tensor] = {}
    report = ConversionReport()
    unknown: list[str] = []
    aux_present = set(tokenizer.aux_decoders.keys())

    def put(src: str, dst: str, value: Tensor) -> None:
        report.mapped[src] = dst
        out[dst] = value

    problems = []
    for key, value in state.items():
        teacher = next((why for prefix, why in _TRAINING_ONLY.items() if key.startswith(prefix)), None)
        if teacher is not None:
            report.skipped[key] = teacher
            continue
        if re.fullmatch(r"[a-z_]+\.freqs_t_[xy]", key):  # RoPE-Mixed's position grid, a persistent buffer
            # filled from the training base size (256 by default), and recomputed by the official forward when
            # its length does not fit the image: never a fact about this checkpoint's resolution
            report.skipped[key] = f"RoPE position grid ({value.numel()} positions; a buffer, recomputed from the image)"
            continue
        if re.fullmatch(r"(decoder|decoder_(hog|dino|clip))\.model\.cls_token", key):
            aux = key.split(".", 1)[0].removeprefix("decoder").removeprefix("_")
            if aux and AUX_NAMES[aux] not in aux_present:
                report.skipped[key] = f"auxiliary decoder {aux!r} (training-only; this tokenizer has no {AUX_NAMES[aux]!r} target)"
            elif aux:
                report.skipped[key] = (f"auxiliary decoder {aux!r}'s class token: training-only (reconstruction never reads it); "
                                       "continued training of its target runs without it")
            elif "decoder.cls_token" in ours:
                put(key, "decoder.cls_token", value)
            else:
                problems.append(f"{key}: the checkpoint's pixel decoder has a class token (dec_cls_token=True), which its "
                                "forward puts in the decoder's sequence; build this tokenizer with decoder_cls_token=True "
                                "(maetok-b-128's default)")
                report.skipped[key] = "refused: see the error"
            continue
        if key.startswith("encoder."):
            rest = key[len("encoder."):]
            simple = {"model.patch_embed.proj.weight": "patch_embed.proj.weight", "model.patch_embed.proj.bias": "patch_embed.proj.bias",
                      "model.cls_token": "cls_token", "model.pos_embed": "pos_embed", "model.norm.weight": "encoder.norm.weight",
                      "model.norm.bias": "encoder.norm.bias", "latent_tokens": "latent_queries",
                      "latent_pos_embed": "latent_pos.table", "mask_token": "mask_token", "freqs": "encoder.rope_freqs"}
            m = re.fullmatch(r"model\.blocks\.(\d+)\.(.+)", rest)
            if rest in simple:
                put(key, simple[rest], value)
            elif m and m.group(2) in _BLOCK:
                v = _permute_qkv(value, heads) if m.group(2).startswith("attn.qkv") else value
                put(key, f"encoder.blocks.{m.group(1)}.{_BLOCK[m.group(2)]}", v)
            else:
                unknown.append(key)
            continue
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            head, tail = key.split(".", 1)
            put(key, f"{'to_latent' if head == 'quant_conv' else 'decoder.latent_in'}.{tail}", value)
            continue
        m = re.fullmatch(r"(decoder|decoder_(hog|dino|clip)|post_quant_conv_(hog|dino|clip)|to_pixel_(hog|dino|clip))\.(.+)", key)
        if not m:
            unknown.append(key)
            continue
        head, rest = m.group(1), m.group(5)
        aux_official = m.group(2) or m.group(3) or m.group(4)
        if aux_official is not None:
            aux = AUX_NAMES[aux_official]
            if aux not in aux_present:
                report.skipped[key] = f"auxiliary decoder {aux_official!r} (training-only; this tokenizer has no {aux!r} target)"
                continue
            prefix = f"aux_decoders.{aux}"
            if head.startswith("post_quant_conv_"):
                put(key, f"{prefix}.latent_in.{rest}", value)
                continue
            if head.startswith("to_pixel_"):
                put(key, f"{prefix}.head.{rest}", value)
                continue
        else:
            prefix = "decoder"
            if rest.startswith("to_pixel.model."):
                v = value[_pixel_rows(patch)] if value.shape[0] == 3 * patch * patch else value
                put(key, f"decoder.head.{rest[len('to_pixel.model.'):]}", v)
                continue
        if rest.startswith(_UNUSED_DECODER_PARTS):
            report.skipped[key] = "never read by the official decoder (its inputs are mask tokens; no absolute positions)"
            continue
        dst = _decoder_map(prefix, rest)
        if dst is None:
            unknown.append(key)
            continue
        if rest == "mask_token":
            value = value.expand(-1, ours[dst].shape[1], -1).clone() if dst in ours else value
        elif re.fullmatch(r"model\.blocks\.\d+\.attn\.qkv\.(weight|bias)", rest):
            module = tokenizer.decoder if prefix == "decoder" else tokenizer.aux_decoders[prefix.split(".", 1)[1]]
            value = _permute_qkv(value, module.heads)
        put(key, dst, value)

    if unknown:
        problems.append(f"keys the official MAETok mapping does not know: {sorted(unknown)[:20]}")
    not_ours = sorted(k for k in out if k not in ours)
    if not_ours:
        problems.append(f"official parts this tokenizer was not built with: {not_ours[:20]} (build it with the official "
                        "architecture: maetok-b-128's defaults, OFFICIAL_ARCH in latentbench/tokenizers/maetok.py)")
    shapes = [f"{k}: official {tuple(out[k].shape)} vs ours {tuple(ours[k].shape)}"
              for k in out if k in ours and out[k].shape != ours[k].shape]
    if shapes:
        problems.append(f"shapes differ (wrong size or resolution?): {shapes[:10]}")
    missing = sorted(k for k in ours if k not in out)
    if missing:
        hint = (" (the checkpoint's pixel decoder has no class token, dec_cls_token=False: build this tokenizer with "
                "decoder_cls_token=False, e.g. a tokenizer YAML with name: maetok-b-128 and init_args: "
                "{decoder_cls_token: false})") if "decoder.cls_token" in missing else ""
        problems.append(f"tokenizer parameters no official key fills: {missing[:20]}{hint}")
    if problems:
        raise ConversionError("cannot convert the official MAETok state dict: " + "; ".join(problems))
    return out, report


__all__ = ["AUX_NAMES", "ConversionError", "ConversionReport", "convert_official_state_dict", "interleaved_to_half",
           "is_official_state_dict"]
