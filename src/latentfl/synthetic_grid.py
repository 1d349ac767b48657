"""A PNG sheet of synthetic images: a row per participant, a column per named class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from latentfl.strategies.base import SyntheticImages


def save_grid(sets: Mapping[str, SyntheticImages], classes: Sequence[str], path: Path,
              scale: int = 3) -> Path:
    """PNG of one synthetic image per class (columns, named) for each participant (rows)."""
    size = scale * next(iter(sets.values())).images.shape[-1]  # square images, upscaled for the eye
    cell, head, side = size + 4, 16, 40
    sheet = Image.new("RGB", (side + cell * len(classes), head + cell * len(sets)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(classes):
        draw.text((side + c * cell + 2, 2), name, fill="black")
    for row, (pid, synthetic) in enumerate(sets.items()):
        images, labels = synthetic.pixels(), synthetic.labels
        draw.text((2, head + row * cell + cell // 2), pid, fill="black")
        for c in labels.unique(sorted=True).tolist():
            pixels = (images[labels == c][0].permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            sheet.paste(tile, (side + c * cell + 2, head + row * cell + 2))
    sheet.save(path)
    return path


__all__ = ["save_grid"]
