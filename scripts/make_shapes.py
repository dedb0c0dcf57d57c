"""Generate the offline image example: coloured shapes in ``train/<label>/*.png`` folders, and tiny random-init image
classifiers to fine-tune on them (``studies/images_local.yaml``).

Why generated rather than shipped: PNGs and weights are binary; the script makes the same files (seeded) on any
machine in a second, and nothing large goes into git. Three classes (circle, square, triangle), drawn in a random
colour, size and position on a random light background: easy enough for a tiny CNN in one or two CPU minutes, hard
enough that a frozen random-init network alone does not solve it.

    python scripts/make_shapes.py studies/data/shapes          # data + tiny-resnet/ + tiny-vit/
    python scripts/make_shapes.py OUT --per-class 20 --size 32

Layout written under OUT::

    train/<label>/<n>.png   validation/<label>/<n>.png   test/<n>.png   test.csv (id,image: paths relative to OUT)
    tiny-resnet/   tiny-vit/   (config.json, model.safetensors, preprocessor_config.json)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

LABELS = ("circle", "square", "triangle")


def draw_shape(label: str, size: int, rng: random.Random):
    """One ``size``×``size`` RGB image of ``label``."""
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(180, 255) for _ in range(3))
    colour = tuple(rng.randint(0, 120) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 3, size * 3 // 4)
    x0 = rng.randint(0, size - extent)
    y0 = rng.randint(0, size - extent)
    box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
    if label == "circle":
        draw.ellipse(box, fill=colour)
    elif label == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent - 1), (x0 + extent - 1, y0 + extent - 1)], fill=colour)
    return image


def make_shapes(out: Path, per_class: int = 40, validation_per_class: int = 12, test: int = 24, size: int = 32,
                seed: int = 0) -> Path:
    """Write the labelled train/validation folders, an unlabelled test folder and ``test.csv`` under ``out``."""
    rng = random.Random(seed)
    for split, count in (("train", per_class), ("validation", validation_per_class)):
        for label in LABELS:
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                draw_shape(label, size, rng).save(folder / f"{n:04d}.png")
    (out / "test").mkdir(parents=True, exist_ok=True)
    lines = ["id,image"]
    for n in range(test):
        name = f"t{n:04d}"
        draw_shape(rng.choice(LABELS), size, rng).save(out / "test" / f"{name}.png")
        lines.append(f"{name},test/{name}.png")
    (out / "test.csv").write_text("\n".join(lines) + "\n")
    return out


def _processor(size: int):
    """A plain resize + normalise processor (the ViT one: no crop, so a 32-pixel image stays whole)."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def make_tiny_resnet(folder: Path, size: int = 32, labels: tuple[str, ...] = LABELS) -> Path:
    """A two-stage, 8/16-channel ResNet (BatchNorm in every block) saved with its image processor."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    _processor(size).save_pretrained(folder)
    return folder


def make_tiny_vit(folder: Path, size: int = 32, labels: tuple[str, ...] = LABELS) -> Path:
    """A two-block, hidden-32 ViT on 8-pixel patches saved with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    _processor(size).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--per-class", type=int, default=40, help="training images per class (default 40)")
    parser.add_argument("--validation-per-class", type=int, default=12)
    parser.add_argument("--test", type=int, default=24, help="unlabelled test images (default 24)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-models", action="store_true", help="only the images")
    args = parser.parse_args(argv)
    make_shapes(args.out, args.per_class, args.validation_per_class, args.test, args.size, args.seed)
    if not args.no_models:
        make_tiny_resnet(args.out / "tiny-resnet", args.size)
        make_tiny_vit(args.out / "tiny-vit", args.size)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
