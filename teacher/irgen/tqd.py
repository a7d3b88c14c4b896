"""`tqd`: the thermal query decoder, an RGB->IR generator with learnable thermal queries (DDColor-style).

    fusion teacher train-irgen --generator tqd --data ../shared/data/roadscene --names train.txt \\
        --config configs/irgen/tqd_cpu.yaml --out build/irgen/tqd
    fusion teacher train-irgen --generator tqd ... --self-check          # debug "the loss does not go down"
    fusion teacher synth-ir --generator tqd --weights build/irgen/tqd --rgb frames/ --out dataset/ --visualize

The network is in `teacher/irgen/tqd_net.py`; this module stays free of torch at import time (the CLI imports it to
collect options). Loss: MSE against the real IR, plus an optional SSIM term (`loss.ssim` > 0).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import numpy as np

from teacher.irgen.data import DataConfig
from teacher.irgen.training import LoopConfig, OptimConfig, TrainableGenerator


@dataclass
class TQDConfig:
    """The network's architecture (saved as config.json beside model.safetensors)."""

    backbone_depth: int = 18  # 18, 34 or 50
    backbone_width: int = 64  # 64 = the ImageNet ResNet; smaller for tiny/CPU models (then no ImageNet weights)
    backbone_weights: str | None = None  # local ImageNet checkpoint (.safetensors or torchvision .pth)
    hidden_dim: int = 256  # width of queries and attention memory
    num_queries: int = 256
    decoder_layers: int = 9
    num_heads: int = 8
    ffn_dim: int = 1024
    embed_dim: int = 256  # per-pixel embedding / projected query size
    full_res_channels: int = 32  # image features at 1/2 and 1/1 feeding the full-resolution embeddings
    dropout: float = 0.0
    input_scale: float = 1.0  # the generator resizes RGB by this factor before the network (set from data.scale)


@dataclass
class TQDLossConfig:
    mse: float = 1.0
    ssim: float = 0.0  # weight of (1 - SSIM); 0 = MSE only


@dataclass
class TQDTrainConfig:
    model: TQDConfig = field(default_factory=TQDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    loss: TQDLossConfig = field(default_factory=TQDLossConfig)


class ThermalQueryDecoderGenerator(TrainableGenerator):
    name = "tqd"
    model_target = "teacher.irgen.tqd_net:ThermalQueryDecoder"
    train_config_class = TQDTrainConfig

    @classmethod
    def build_model(cls, cfg):
        from teacher.irgen.resnet import with_backbone_weights
        model_cfg, source = with_backbone_weights(dataclasses.replace(cfg.model, input_scale=cfg.data.scale))
        model = cls.network_class()(model_cfg)
        print(f"tqd: ResNet-{model_cfg.backbone_depth} (width {model_cfg.backbone_width}) backbone from {source}, "
              f"{model_cfg.num_queries} queries, {model_cfg.decoder_layers} decoder layers, "
              f"{model.num_parameters() / 1e6:.2f} M parameters", file=sys.stderr)
        return model

    @classmethod
    def compute_loss(cls, model, batch, cfg):
        import torch.nn.functional as F

        from teacher.irgen.losses import ssim
        prediction = model(batch["rgb"]).float()
        target = batch["ir"].float()
        mse = F.mse_loss(prediction, target)
        loss = cfg.loss.mse * mse
        parts = {"mse": mse.item()}
        if cfg.loss.ssim > 0:
            ssim_loss = 1 - ssim(prediction, target).mean()
            loss = loss + cfg.loss.ssim * ssim_loss
            parts["ssim_loss"] = ssim_loss.item()
        parts["loss"] = loss.item()
        return loss, parts

    def important_queries(self, query_maps, count: int) -> list[int]:
        """Queries contributing most to this image's output: |output weight| x spatial spread of its map."""
        weights = self.model.output_head.weight[0, : query_maps.shape[0], 0, 0].abs()
        contribution = weights * query_maps.flatten(1).std(1)
        return contribution.argsort(descending=True)[:count].tolist()

    def visualize(self, rgb: np.ndarray, ir: np.ndarray, queries: list[int] | None = None, count: int = 6,
                  layer: int = -1) -> np.ndarray:
        """RGB, synthesised IR, then the cross-attention maps of `queries` (default: the `count` queries that
        contribute most to this image) in decoder `layer`, over the gray image -> RGB uint8 panel."""
        from teacher.irgen.data import resize_by
        from teacher.irgen.visualize import grid, heatmap_overlay
        x, _ = self._forward(rgb)
        maps, query_maps = self.model.attention_maps(x.float(), layer=layer)
        chosen = queries if queries is not None else self.important_queries(query_maps, count)
        base = resize_by(rgb, self.model.config.input_scale)
        layer_index = layer % len(self.model.layers)
        row = [("RGB", rgb), ("synthesised IR", ir)]
        row += [(f"query {q} (layer {layer_index})", heatmap_overlay(base, maps[q].cpu().numpy())) for q in chosen]
        return grid([row[: 2 + (len(row) - 2) // 2], row[2 + (len(row) - 2) // 2:]] if len(row) > 5 else [row])
