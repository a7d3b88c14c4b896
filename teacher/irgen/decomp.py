"""`decomp`: the physics-inspired multi-task decomposition generator, RGB -> intensity / material / context -> IR.

    fusion teacher train-irgen --generator decomp --data ../shared/data/roadscene --names train.txt \\
        --config configs/irgen/decomp_cpu.yaml --out build/irgen/decomp
    fusion teacher synth-ir --generator decomp --weights build/irgen/decomp --rgb frames/ --out dataset/ --visualize

What it is, honestly: a shared encoder with three heads trained on pseudo-labels (teacher/irgen/pseudo_labels.py)
and a small fusion module shaped like thermal emission (teacher/irgen/decomp_net.py). An RGB frame cannot determine
temperature, emissivity and surroundings (one equation, three unknowns), so the heads learn representations that
*resemble* those quantities, not a physical decomposition; the reconstruction is what is evaluated.

Loss (weights in `loss.*`): intensity L1 1.0 + material cross-entropy 0.5 + context L1 0.3 + physics
(reconstruction MSE against the real IR) 0.5 + consistency 0.1, where consistency = 1 - Pearson correlation between
the intensity map and the reconstruction (the "temperature" map and the IR it produces should agree in structure).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teacher.irgen.data import DataConfig
from teacher.irgen.pseudo_labels import CONTEXT_NAMES, LabelConfig
from teacher.irgen.training import LoopConfig, OptimConfig, TrainableGenerator


@dataclass
class DecompConfig:
    """The network's architecture (saved as config.json beside model.safetensors)."""

    backbone_depth: int = 18
    backbone_width: int = 64
    backbone_weights: str | None = None  # local ImageNet checkpoint (.safetensors or torchvision .pth)
    hidden_dim: int = 128  # FPN width
    embed_dim: int = 64  # shared full-resolution feature width feeding the heads
    full_res_channels: int = 32
    num_materials: int = 32
    context_channels: int = len(CONTEXT_NAMES)
    input_scale: float = 1.0  # the generator resizes RGB by this factor before the network (set from data.scale)


@dataclass
class DecompLossConfig:
    intensity: float = 1.0
    material: float = 0.5
    context: float = 0.3
    physics: float = 0.5  # reconstruction of the real IR
    consistency: float = 0.1  # 1 - corr(intensity, reconstruction)


@dataclass
class DecompTrainConfig:
    model: DecompConfig = field(default_factory=DecompConfig)
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    loss: DecompLossConfig = field(default_factory=DecompLossConfig)


class DecompositionGenerator(TrainableGenerator):
    name = "decomp"
    model_target = "teacher.irgen.decomp_net:DecompositionNet"
    train_config_class = DecompTrainConfig

    @classmethod
    def build_model(cls, cfg):
        from teacher.irgen.resnet import with_backbone_weights
        model_cfg, source = with_backbone_weights(dataclasses.replace(cfg.model, input_scale=cfg.data.scale))
        model = cls.network_class()(model_cfg)
        print(f"decomp: ResNet-{model_cfg.backbone_depth} (width {model_cfg.backbone_width}) encoder from {source}, "
              f"{model_cfg.num_materials} material classes, {model.num_parameters() / 1e6:.2f} M parameters",
              file=sys.stderr)
        return model

    @classmethod
    def extras(cls, cfg, args, out: Path):
        """Pseudo-labels per pair: k-means centroids are fitted over all training images first (cached)."""
        from runtime.imageio import read_pair
        from teacher.irgen.data import load_training_pairs, resize_by
        from teacher.irgen.pseudo_labels import PseudoLabeler
        labeler = PseudoLabeler(cfg.labels, cfg.model.num_materials,
                                Path(cfg.labels.cache_dir) if cfg.labels.cache_dir else out / "pseudo_labels",
                                scale=cfg.data.scale, seed=args.seed)
        if cfg.labels.material_method == "kmeans":
            images = []
            for pair in load_training_pairs(args.data, args.names):
                ir, vis = read_pair(pair)
                rgb = np.repeat(vis[..., None], 3, axis=2) if vis.ndim == 2 else vis
                images.append((pair, resize_by(rgb, cfg.data.scale), resize_by(ir, cfg.data.scale)))
            labeler.prepare(images)
        return labeler

    @classmethod
    def compute_loss(cls, model, batch, cfg):
        import torch.nn.functional as F

        from teacher.irgen.losses import pearson_correlation
        ir, maps = model(batch["rgb"], return_all=True)
        target = batch["ir"].float()
        w = cfg.loss
        parts = {
            "intensity": F.l1_loss(maps["intensity"].float(), batch["intensity"].float()),
            "material": F.cross_entropy(maps["material_logits"].float(), batch["material"][:, 0].long()),
            "context": F.l1_loss(maps["context"].float(), batch["context"].float()),
            "physics": F.mse_loss(ir.float(), target),
            "consistency": (1 - pearson_correlation(maps["intensity"].float(), ir.float())).mean(),
        }
        loss = sum(getattr(w, key) * value for key, value in parts.items())
        values = {key: value.item() for key, value in parts.items()}
        values["loss"] = loss.item()
        return loss, values

    def decompose(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """RGB (H,W,3) [0,1] -> maps at the network's scale: intensity (h,w), material (h,w) int, context (h,w,8),
        emissivity (h,w), environment (h,w), reconstruction (h,w)."""
        import torch
        x, _ = self._forward(rgb)
        with torch.no_grad():
            ir, maps = self.model(x.float(), return_all=True)
        return {"intensity": maps["intensity"][0, 0].float().cpu().numpy(),
                "material": maps["material_logits"][0].argmax(0).cpu().numpy(),
                "context": maps["context"][0].float().permute(1, 2, 0).cpu().numpy(),
                "emissivity": maps["emissivity"][0, 0].float().cpu().numpy(),
                "environment": maps["environment"][0, 0].float().cpu().numpy(),
                "reconstruction": ir[0, 0].float().cpu().numpy()}

    def visualize(self, rgb: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """RGB | intensity | material map | context (brightness, shadow, texture as RGB) | emissivity-like |
        environment | reconstruction -> RGB uint8 panel."""
        from teacher.irgen.visualize import grid, label_map_to_rgb
        maps = self.decompose(rgb)
        context = maps["context"]
        pick = [CONTEXT_NAMES.index(n) for n in ("brightness", "shadow", "texture")]
        return grid([
            [("RGB", rgb), ("intensity head", maps["intensity"]),
             ("material head (argmax)", label_map_to_rgb(maps["material"], self.model.config.num_materials)),
             ("context: bright/shadow/texture", context[..., pick])],
            [("emissivity-like", maps["emissivity"]), ("environment", maps["environment"]),
             ("reconstruction", maps["reconstruction"])],
        ])

    def settings(self):
        record = super().settings()
        fusion = self.model.fusion
        record["fusion"] = {"exponent": float(fusion.exponent.detach()), "mix": float(fusion.mix_logit.detach().sigmoid()),
                            "gain": float(fusion.gain.detach()), "bias": float(fusion.bias.detach())}
        return record
