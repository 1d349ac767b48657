"""A PNG sheet of FedDGM's synthetic images: a row per participant, a column per named class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw


def synthetic_sets(tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """FedDGM's synthetic (images in [0, 1], labels) per participant, from its state dict."""
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return {pid: ((tensors[f"synthetic.{pid}.images"] * std + mean).clamp(0, 1),
                  tensors[f"synthetic.{pid}.labels"]) for pid in meta["synthetic"]}


def save_grid(tensors: dict[str, torch.Tensor], meta: dict[str, Any], classes: Sequence[str],
              path: Path, scale: int = 3) -> Path:
    """PNG of one synthetic image per class (columns, named) for each participant (rows)."""
    sets = synthetic_sets(tensors, meta)
    size = scale * next(iter(sets.values()))[0].shape[-1]  # square images, upscaled for the eye
    cell, head, side = size + 4, 16, 40
    sheet = Image.new("RGB", (side + cell * len(classes), head + cell * len(sets)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(classes):
        draw.text((side + c * cell + 2, 2), name, fill="black")
    for row, (pid, (images, labels)) in enumerate(sets.items()):
        draw.text((2, head + row * cell + cell // 2), pid, fill="black")
        for c in labels.unique(sorted=True).tolist():
            pixels = (images[labels == c][0].permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            sheet.paste(tile, (side + c * cell + 2, head + row * cell + 2))
    sheet.save(path)
    return path


__all__ = ["save_grid", "synthetic_sets"]
