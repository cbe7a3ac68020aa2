"""The Pixel3DMM prior network: a timm DINOv2 ViT and a light dense-prediction head.

    image (B, 3, 14g, 14g) -> backbone tokens (B, g*g, D) -> linear to width W -> depth x pre-LN transformer
    blocks -> (B, W, g, g) -> three stride-2 transposed convolutions (+ GELU) -> (B, W, 8g, 8g) -> linear to
    2x2xC per location -> unpatchify -> (B, C, 16g, 16g)

With the paper's 448 px input (g = 32) the output is 512 x 512. Normals (C = 3) are unit-normalised; UV
(C = 2) is regressed directly as (u, 1 - v). A plain `nn.Module`, usable without Lightning.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_CHANNELS = {"normal": 3, "uv": 2}


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild a network (stored in checkpoints and the exported file).

    Args:
        backbone: a timm DINOv2 name, e.g. "vit_base_patch14_dinov2", "vit_small_patch14_reg4_dinov2".
        output_size: side of the predicted maps; the input is output_size / 16 * 14 (512 -> 448).
        outputs: which maps to predict: ("normal",), ("uv",) or both.
        shared_backbone: with two outputs, one backbone and two heads (False: two full networks, as the
            paper trains them).
        head_width: transformer/conv width of the head (paper: 256).
        head_depth: transformer blocks in the head (paper: 4).
        head_heads: attention heads in the head blocks.
        backbone_kwargs: overrides passed to `timm.create_model` (e.g. a tiny ViT for tests:
            {"depth": 2, "embed_dim": 48, "num_heads": 2}).
    """

    backbone: str = "vit_base_patch14_dinov2"
    output_size: int = 512
    outputs: tuple[str, ...] = ("normal",)
    shared_backbone: bool = False
    head_width: int = 256
    head_depth: int = 4
    head_heads: int = 8
    backbone_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_size % 16:
            raise ValueError(f"NetworkConfig: output_size must be a multiple of 16 (token grid x 16), got {self.output_size}")
        unknown = [o for o in self.outputs if o not in OUTPUT_CHANNELS]
        if unknown or not self.outputs or len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"NetworkConfig: outputs must be distinct names from {sorted(OUTPUT_CHANNELS)}, "
                             f"got {list(self.outputs)}")
        if "dinov2" not in self.backbone:
            raise ValueError(f"NetworkConfig: backbone must be a timm DINOv2 ViT (patch 14), got {self.backbone!r}")

    @property
    def grid(self) -> int:
        return self.output_size // 16

    @property
    def input_size(self) -> int:
        return self.grid * 14

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"] = list(self.outputs)
        return d


def create_backbone(config: NetworkConfig, weights: str | os.PathLike | None = None) -> nn.Module:
    """A timm DINOv2 ViT at the config's input size, without classifier.

    `weights`: a local timm/safetensors/torch state dict file; None with `pretrained` in backbone_kwargs
    loads from the hub (online only; with HF_HUB_OFFLINE=1 it fails fast).
    """
    import timm

    kwargs = {"pretrained": False, **config.backbone_kwargs, "img_size": config.input_size, "num_classes": 0}
    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: backbone weights not found")
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {"file": path}
    try:
        return timm.create_model(config.backbone, **kwargs)
    except RuntimeError as e:  # a state dict that does not fit the architecture
        raise ValueError(f"{config.backbone}: cannot load backbone weights ({e})".replace("\n", " ")) from None


class HeadBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, ratio 4)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(width)
        self.attn = nn.MultiheadAttention(width, heads, bias=False, batch_first=True)
        self.norm2 = norm_layer(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class DenseHead(nn.Module):
    """Tokens (B, g*g, D) -> maps (B, C, 16g, 16g)."""

    def __init__(self, in_dim: int, out_channels: int, grid: int, width: int = 256, depth: int = 4, heads: int = 8):
        super().__init__()
        self.grid, self.out_channels = grid, out_channels
        self.proj = nn.Linear(in_dim, width)
        self.blocks = nn.Sequential(*[HeadBlock(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.up = nn.Sequential(*[m for _ in range(3) for m in (nn.ConvTranspose2d(width, width, 2, stride=2), nn.GELU())])
        self.out = nn.Linear(width, 4 * out_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        if n != self.grid * self.grid:
            raise ValueError(f"DenseHead: expected {self.grid}x{self.grid} tokens, got {n}")
        x = self.norm(self.blocks(self.proj(tokens)))
        x = x.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        x = self.up(x)  # (B, W, 8g, 8g)
        x = self.out(x.permute(0, 2, 3, 1))  # (B, 8g, 8g, 4C)
        s = 8 * self.grid
        x = x.reshape(b, s, s, 2, 2, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, self.out_channels, 2 * s, 2 * s)


class PriorNet(nn.Module):
    """Backbone(s) + one head per output; forward returns {"normal": (B, 3, S, S) unit, "uv": (B, 2, S, S)}.

    Input: (B, 3, input_size, input_size) float RGB in [0, 1] (ImageNet normalisation is applied inside).
    """

    def __init__(self, config: NetworkConfig, backbone_weights: str | os.PathLike | None = None):
        super().__init__()
        self.config = config
        names = ["shared"] if config.shared_backbone else list(config.outputs)
        self.backbones = nn.ModuleDict({name: create_backbone(config, backbone_weights) for name in names})
        dim = next(iter(self.backbones.values())).embed_dim
        self.heads = nn.ModuleDict({
            out: DenseHead(dim, OUTPUT_CHANNELS[out], config.grid, config.head_width, config.head_depth, config.head_heads)
            for out in config.outputs
        })
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def tokens(self, backbone: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, g*g, D): forward_features minus the class and register tokens."""
        return backbone.forward_features(image)[:, backbone.num_prefix_tokens :]

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.config.input_size
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[-2:] != (size, size):
            raise ValueError(f"PriorNet: expected (B, 3, {size}, {size}) images, got {tuple(image.shape)}")
        x = (image - self.mean) / self.std
        shared = self.tokens(self.backbones["shared"], x) if self.config.shared_backbone else None
        out = {}
        for name, head in self.heads.items():
            tokens = shared if shared is not None else self.tokens(self.backbones[name], x)
            pred = head(tokens)
            out[name] = F.normalize(pred.float(), dim=1) if name == "normal" else pred.float()
        return out

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters)."""
        return list(self.backbones.parameters()), list(self.heads.parameters())
