"""The thermal query decoder network (DDColor / Mask2Former style), RGB -> IR.

    image (N,3,H,W) --ResNet--> res2..res5 --PixelDecoder--> memory at 1/32, 1/16, 1/8 (+ sine positions)
                                                         \\-> per-pixel embeddings (N,E,H,W) at full resolution
    K learnable thermal queries: query_feat (what a query looks for) + query_embed (where, added to q and k)
      x L decoder layers: cross-attention to one memory level (round robin 1/32 -> 1/16 -> 1/8),
                          self-attention between queries, FFN
    query embeddings (N,K,E) . per-pixel embeddings -> K query maps (N,K,H,W)
    1x1 conv over [query maps, RGB] -> sigmoid -> IR (N,1,H,W)

Each query learns a kind of thermal "look" (warm bodies, sky, asphalt...) and where it applies; the image's own
pixels decide which queries they belong to. `record_attention=True` keeps the cross-attention weights of every
layer for visualisation (`attention_maps`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teacher.irgen.layers import PixelDecoder, sine_position_encoding
from teacher.irgen.modeling import ConfigModel
from teacher.irgen.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet, load_imagenet_weights
from teacher.irgen.tqd import TQDConfig


class DecoderLayer(nn.Module):
    """Cross-attention -> self-attention -> FFN, each residual + post-LayerNorm (Mask2Former's order)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm_cross, self.norm_self, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, queries, query_pos, memory, memory_pos, need_weights: bool = False):
        """queries, query_pos (N,K,D); memory, memory_pos (N,L,D) -> (queries (N,K,D), weights (N,K,L) or None)."""
        attended, weights = self.cross_attn(queries + query_pos, memory + memory_pos, memory,
                                            need_weights=need_weights, average_attn_weights=True)
        queries = self.norm_cross(queries + attended)
        q = k = queries + query_pos
        queries = self.norm_self(queries + self.self_attn(q, k, queries, need_weights=False)[0])
        queries = self.norm_ffn(queries + self.ffn(queries))
        return queries, weights


class ThermalQueryDecoder(ConfigModel):
    config_class = TQDConfig

    def __init__(self, config: TQDConfig):
        super().__init__(config)
        c = config
        self.backbone = ResNet(c.backbone_depth, c.backbone_width)
        self.pretrained_tensors = 0
        if c.backbone_weights:
            self.pretrained_tensors = load_imagenet_weights(self.backbone, c.backbone_weights)
        self.pixel_decoder = PixelDecoder(self.backbone.channels, c.hidden_dim, c.embed_dim, c.full_res_channels)
        self.num_levels = 3
        self.level_embed = nn.Embedding(self.num_levels, c.hidden_dim)
        self.query_feat = nn.Embedding(c.num_queries, c.hidden_dim)
        self.query_embed = nn.Embedding(c.num_queries, c.hidden_dim)
        self.layers = nn.ModuleList(DecoderLayer(c.hidden_dim, c.num_heads, c.ffn_dim, c.dropout)
                                    for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.hidden_dim)
        self.query_mlp = nn.Sequential(nn.Linear(c.hidden_dim, c.hidden_dim), nn.ReLU(inplace=True),
                                       nn.Linear(c.hidden_dim, c.hidden_dim), nn.ReLU(inplace=True),
                                       nn.Linear(c.hidden_dim, c.embed_dim))
        self.output_head = nn.Conv2d(c.num_queries + 3, 1, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.record_attention = False
        self.last_attention: list[tuple[torch.Tensor, tuple[int, int]]] = []

    def forward(self, rgb: torch.Tensor, return_query_maps: bool = False):
        """rgb (N,3,H,W) in [0,1] -> IR (N,1,H,W) in [0,1] (and the query maps (N,K,H,W) when asked)."""
        x = (rgb - self.mean) / self.std
        feats = self.backbone(x)
        levels, pixel_embedding = self.pixel_decoder(x, feats)
        memories, positions, shapes = [], [], []
        for i, level in enumerate(levels):
            n, d, h, w = level.shape
            pos = sine_position_encoding(h, w, d, device=level.device, dtype=level.dtype)
            memories.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None, :])
            positions.append(pos.flatten(1).transpose(0, 1)[None].expand(n, -1, -1))
            shapes.append((h, w))
        n = rgb.shape[0]
        queries = self.query_feat.weight[None].expand(n, -1, -1)
        query_pos = self.query_embed.weight[None].expand(n, -1, -1)
        self.last_attention = []
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            queries, weights = layer(queries, query_pos, memories[level], positions[level],
                                     need_weights=self.record_attention)
            if weights is not None:
                self.last_attention.append((weights.detach(), shapes[level]))
        query_vectors = self.query_mlp(self.decoder_norm(queries))  # (N,K,E)
        query_maps = torch.einsum("nke,nehw->nkhw", query_vectors, pixel_embedding)
        ir = torch.sigmoid(self.output_head(torch.cat((query_maps, rgb * 2 - 1), dim=1)))
        return (ir, query_maps) if return_query_maps else ir

    @torch.no_grad()
    def attention_maps(self, rgb: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention of every query in one decoder layer, upsampled to the image.

        rgb (1,3,H,W) -> (maps (K,H,W), each normalised to [0,1]; query_maps (K,H,W) of the output projection)
        """
        previous = self.record_attention
        self.record_attention = True
        try:
            _, query_maps = self.forward(rgb, return_query_maps=True)
        finally:
            self.record_attention = previous
        weights, (h, w) = self.last_attention[layer]
        maps = weights[0].reshape(-1, 1, h, w).float()
        maps = F.interpolate(maps, size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        low = maps.flatten(1).min(1)[0][:, None, None]
        high = maps.flatten(1).max(1)[0][:, None, None]
        return (maps - low) / (high - low).clamp_min(1e-12), query_maps[0]
