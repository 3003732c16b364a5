"""The tiny DETR-like transformer ("arch transformer"): conv tokens -> encoder -> decoder over queries.

Memory is the design constraint. With ``--use-fpn`` the original tool fed 2,368 tokens (two 32x32
maps, 16x16, 8x8 at 64x64 input) through ``nn.Transformer`` layers, whose training path keeps a
(tokens x tokens) attention matrix per head: ~90 MB per image and layer, so batch 64 ran out of
24 GB. Here every attention is ``F.scaled_dot_product_attention`` on batch-first (B, heads, L, d)
tensors, which on CPU dispatches to the fused flash-attention kernel (forward and backward in
blocks, never the full matrix). ``bench/transformer_cost.py`` measures the result.

Token layouts (``--fpn-layout``, only with ``--use-fpn``):

- ``s2-s2-s4-s8`` (the original): stem (stride 2) + a refining conv at stride 2 + two depthwise
  blocks at strides 4 and 8 -> 32x32 + 32x32 + 16x16 + 8x8 = 2,368 tokens at 64x64.
- ``s4-s8-s16``: stem + three depthwise blocks at strides 4, 8, 16; tokens of the last three maps
  -> 16x16 + 8x8 + 4x4 = 336 tokens at 64x64 (attention cost ~50x lower).

Without ``--use-fpn`` the tokens are the stem's stride-2 map (32x32 = 1,024 at 64x64).
Layers are pre-norm (LayerNorm before attention / feed-forward, a final LayerNorm after each stack):
they train at the original's lr 1e-3 without the warm-up post-norm DETR needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.layers.blocks import ConvBNAct, DepthwiseSeparable, make_activation
from uhd_core.models.registry import register_backbone
from uhd_core.registry import FamilySpec

#: Token layouts for --use-fpn: the strides whose feature maps become encoder tokens.
FPN_LAYOUTS = {"s2-s2-s4-s8": (2, 2, 4, 8), "s4-s8-s16": (4, 8, 16)}


def sine_position_encoding(height: int, width: int, dim: int, *, device: torch.device, dtype: torch.dtype,
                           temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine-cosine position encoding (DETR style) for a (height, width) map -> (height*width, dim).

    Coordinates are cell centres normalized to 0..2pi per axis, so maps of different strides share
    one frame (a token at the same image point gets the same encoding on every level). The first
    dim/2 channels encode y, the rest x; within each half even channels are sin, odd cos.
    Computed for the actual size on the caller's device/dtype on every call (it is a few hundred
    flops), so nothing is cached across devices, dtypes or input sizes.
    """
    if dim % 4:
        raise ValueError(f"position encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * (2 * math.pi)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * (2 * math.pi)
    freq = temperature ** (2 * (torch.arange(half, device=device, dtype=torch.float32) // 2) / half)
    pos_y = ys[:, None] / freq  # (H, half)
    pos_x = xs[:, None] / freq  # (W, half)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    grid = torch.cat((pos_y[:, None, :].expand(height, width, half), pos_x[None, :, :].expand(height, width, half)), -1)
    return grid.reshape(height * width, dim).to(dtype)


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention`` (batch-first).

    query (B, Lq, D), key (B, Lk, D), value (B, Lk, D) -> (B, Lq, D). Separate q/k/v projections
    because DETR adds position encodings to queries and keys but not to values.
    """

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # unflatten (not view with traced sizes) keeps batch and length dynamic in ONNX export
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Lq, head_dim)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, dim_feedforward: int, activation: str) -> None:
        # out of place, as it was trained and exported before the activation was shared with the CNN
        super().__init__(nn.Linear(d_model, dim_feedforward), make_activation(activation, inplace=False),
                         nn.Linear(dim_feedforward, d_model))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward; tokens (B, L, D), pos (L, D) or (B, L, D)."""

    def __init__(self, d_model: int, heads: int, dim_feedforward: int, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, activation)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.norm1(tokens)
        qk = x + pos
        tokens = tokens + self.self_attn(qk, qk, x)
        return tokens + self.ffn(self.norm2(tokens))


class DecoderLayer(nn.Module):
    """Pre-norm query self-attention, cross-attention to the encoder memory, feed-forward.

    tgt (B, Q, D), query_pos (Q, D), memory (B, L, D), pos (L, D) or (B, L, D) -> (B, Q, D).
    """

    def __init__(self, d_model: int, heads: int, dim_feedforward: int, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = Attention(d_model, heads)
        self.norm3 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dim_feedforward, activation)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        x = self.norm1(tgt)
        qk = x + query_pos
        tgt = tgt + self.self_attn(qk, qk, x)
        tgt = tgt + self.cross_attn(self.norm2(tgt) + query_pos, memory + pos, memory)
        return tgt + self.ffn(self.norm3(tgt))


class TokenStem(nn.Module):
    """Image (B, 3, H, W) -> list of feature maps (B, D, h_i, w_i) whose cells become tokens."""

    def __init__(self, d_model: int, activation: str, use_fpn: bool, fpn_layout: str) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, d_model, 3, 2, activation)
        self.levels: tuple[int, ...]
        if not use_fpn:
            self.levels = (2,)
            self.blocks = nn.ModuleList()
            self.token_from = (0,)  # index 0 = the stem output
            return
        if fpn_layout not in FPN_LAYOUTS:
            raise ValueError(f"unknown fpn layout {fpn_layout!r} (known: {', '.join(FPN_LAYOUTS)})")
        self.levels = FPN_LAYOUTS[fpn_layout]
        if fpn_layout == "s2-s2-s4-s8":
            # the original: a refining conv at the stem's resolution, then two downsampling blocks
            self.blocks = nn.ModuleList([
                ConvBNAct(d_model, d_model, 3, 1, activation),
                DepthwiseSeparable(d_model, d_model, 2, activation),
                DepthwiseSeparable(d_model, d_model, 2, activation),
            ])
            self.token_from = (0, 1, 2, 3)
        else:
            self.blocks = nn.ModuleList([DepthwiseSeparable(d_model, d_model, 2, activation) for _ in range(3)])
            self.token_from = (1, 2, 3)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.stem(images)]
        for block in self.blocks:
            maps.append(block(maps[-1]))
        return [maps[i] for i in self.token_from]


class TinyDETR(nn.Module):
    """Backbone of the transformer family: image (B, 3, H, W) RGB 0..1 -> query features (B, Q, D).

    The DetrHead turns the query features into class logits and boxes.
    """

    def __init__(self, d_model: int = 64, heads: int = 4, layers: int = 3, dim_feedforward: int = 128,
                 num_queries: int = 10, activation: str = "swish", use_fpn: bool = False,
                 fpn_layout: str = "s2-s2-s4-s8") -> None:
        super().__init__()
        if d_model % 4:
            raise ValueError(f"--d-model must be divisible by 4 (2-D sine position encoding), got {d_model}")
        if d_model % heads:
            raise ValueError(f"--d-model {d_model} must be divisible by --heads {heads}")
        self.tokens = TokenStem(d_model, activation, use_fpn, fpn_layout)
        # one learned embedding per token level, so the encoder can tell levels apart
        self.level_embed = nn.Parameter(torch.zeros(len(self.tokens.token_from), d_model))
        self.encoder = nn.ModuleList([EncoderLayer(d_model, heads, dim_feedforward, activation) for _ in range(layers)])
        self.encoder_norm = nn.LayerNorm(d_model)
        self.query_embed = nn.Parameter(torch.randn(num_queries, d_model) * 0.1)
        self.decoder = nn.ModuleList([DecoderLayer(d_model, heads, dim_feedforward, activation) for _ in range(layers)])
        self.decoder_norm = nn.LayerNorm(d_model)
        self.out_channels = d_model
        self.num_queries = num_queries

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (B, L, D) after the encoder and their position encodings (L, D)."""
        tokens, positions = [], []
        for level, fmap in enumerate(self.tokens(images)):
            h, w = fmap.shape[-2:]
            tokens.append(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
            pe = sine_position_encoding(h, w, self.out_channels, device=fmap.device, dtype=fmap.dtype)
            positions.append(pe + self.level_embed[level].to(fmap.dtype))
        memory = torch.cat(tokens, 1) if len(tokens) > 1 else tokens[0]
        pos = torch.cat(positions, 0) if len(positions) > 1 else positions[0]
        for layer in self.encoder:
            memory = layer(memory, pos)
        return self.encoder_norm(memory), pos

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        memory, pos = self.encode(images)
        query_pos = self.query_embed.to(memory.dtype)
        tgt = torch.zeros_like(query_pos).expand(memory.shape[0], -1, -1)
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, memory, pos)
        return self.decoder_norm(tgt)


#: The transformer's queries feed only its set-prediction head, which takes any input size (no stride).
TRANSFORMER_FAMILY = FamilySpec(
    "transformer", heads=("detr",),
    teachers={"teacher_ckpt": "a transformer teacher's queries into a transformer student"},
    smoke_config={"d_model": 16, "heads": 2, "layers": 1, "dim_feedforward": 16, "num_queries": 5, "use_fpn": True,
                  "fpn_layout": "s4-s8-s16"},
)


@register_backbone(TRANSFORMER_FAMILY)
def build_transformer(cfg: RunConfig) -> TinyDETR:
    return TinyDETR(cfg.d_model, cfg.heads, cfg.layers, cfg.dim_feedforward, cfg.num_queries, cfg.activation,
                    cfg.use_fpn, cfg.fpn_layout)
