"""Vision Transformer for small images (patch 4, width 512, 6 blocks, 8 heads, MLP 512).

Attention is written with plain matmuls and softmax rather than a fused kernel, so the model
supports double backward (distillation differentiates through training steps). The class token
and positional embeddings are ``nn.Embedding`` lookups, not bare parameters, so every trainable
tensor lives in a standard layer that per-sample-gradient tools (Opacus) know.
"""

from __future__ import annotations

import torch
from torch import nn

from latentfl.errors import ModelError
from latentfl.models._layers import check_positive_int


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over (N, T, dim) tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, dim = x.shape
        # (N, T, 3*dim) -> 3 x (N, heads, T, dim/heads)
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (dim // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, class token, learned positions, transformer blocks, linear head."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        *,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
    ) -> None:
        super().__init__()
        channels, height, width = in_shape
        self.num_tokens = (height // patch) * (width // patch) + 1
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Embedding(1, dim)
        self.position = nn.Embedding(self.num_tokens, dim)
        nn.init.normal_(self.cls_token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T-1, dim)
        cls = self.cls_token(torch.zeros(n, 1, dtype=torch.long, device=x.device))  # (N, 1, dim)
        positions = torch.arange(self.num_tokens, device=x.device).expand(n, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.position(positions)  # (N, T, dim)
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def build_vit(
    num_classes: int,
    in_shape: tuple[int, int, int],
    *,
    patch: int = 4,
    dim: int = 512,
    depth: int = 6,
    heads: int = 8,
    mlp_dim: int = 512,
) -> ViT:
    """Validate the options and build a :class:`ViT`."""
    for option, value in (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads),
                          ("mlp_dim", mlp_dim)):
        check_positive_int("vit", option, value)
    if dim % heads:
        raise ModelError(
            f"vit option dim={dim} is not divisible by heads={heads}; expected a multiple."
        )
    if in_shape[1] % patch or in_shape[2] % patch:
        raise ModelError(
            f"vit option patch={patch} does not tile a {in_shape[1]}x{in_shape[2]} image; "
            f"expected a patch size dividing both sides."
        )
    return ViT(
        num_classes, in_shape, patch=patch, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim
    )
