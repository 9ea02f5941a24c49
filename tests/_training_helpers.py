"""Tiny, fast training fixtures shared by the Trainer, checkpoint and DDP tests.

Not a test module. Run as a script under ``torchrun`` it is the DDP worker of
``test_training.py::test_ddp_two_gloo_processes_match_single_process``.
"""

from __future__ import annotations

import argparse
import json
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class DiscDataset(Dataset):
    """Bright discs (class 1) in Gaussian noise; items ``{"image": (1, S, S), "label": (1, S, S)}``.

    With ``spatial_dims=3`` the discs are balls in ``(1, S, S, S)`` volumes. ``empty=True``
    gives images without any disc (all-background labels).
    """

    def __init__(self, num_items: int = 32, size: int = 32, seed: int = 0, noise: float = 0.3,
                 spatial_dims: int = 2, empty: bool = False) -> None:
        rng = np.random.default_rng(seed)
        grid = np.indices((size,) * spatial_dims, dtype=np.float32)
        images, labels = [], []
        for _ in range(num_items):
            centre = rng.uniform(size * 0.3, size * 0.7, spatial_dims)
            radius = rng.uniform(size * 0.12, size * 0.25)
            distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
            label = (distance <= radius) & (not empty)
            image = label.astype(np.float32) + rng.normal(0, noise, label.shape).astype(np.float32)
            images.append(image[None])
            labels.append(label[None].astype(np.int64))
        self.images = torch.from_numpy(np.stack(images))
        self.labels = torch.from_numpy(np.stack(labels))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


class AugmentedDiscs(DiscDataset):
    """`DiscDataset` with random augmentation drawn from the *global* Python, NumPy and torch
    RNGs (as many real pipelines do): exact resume must restore all three."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        image, label = item["image"], item["label"]
        if torch.rand(()) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        scale = 1.0 + 0.2 * (np.random.rand() - 0.5)  # noqa: NPY002 - global RNG on purpose
        shift = 0.1 * (random.random() - 0.5)
        return {"image": image * scale + shift, "label": label}


class TinyNet(nn.Module):
    """Three convolutions (receptive field 9 px), no normalisation: (B, 1, *S) -> (B, C, *S)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                 width: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        drop = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        self.body = nn.Sequential(
            conv(in_channels, width, 3, padding=1), nn.ReLU(), drop(dropout),
            conv(width, width, 3, padding=2, dilation=2), nn.ReLU(),
            conv(width, width, 3, padding=1), nn.ReLU(),
            conv(width, num_classes, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


def ce_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a ``(B, 1, *S)`` label (the layout of our batches)."""
    return F.cross_entropy(logits, label[:, 0])


def make_loaders(batch_size: int = 8, seed: int = 0, shuffle: bool = True,
                 num_items: int = 32, **kw) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled with its own generator) and a validation loader."""
    train = DiscDataset(num_items, seed=seed, **kw)
    val = DiscDataset(max(8, num_items // 4), seed=seed + 1000, **kw)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return (DataLoader(train, batch_size=batch_size, shuffle=shuffle, generator=generator),
            DataLoader(val, batch_size=8))


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train_reference(world_size: int, steps_per_rank_batch: int, epochs: int, out: str | None,
                    rank_batch: int = 2) -> dict:
    """The DDP comparison run: same model seed, same global batches, no shuffling.

    Single process: batch ``world_size * rank_batch``, sequential order. Under torchrun:
    batch ``rank_batch`` per rank with ``DistributedSampler(shuffle=False)``, so step ``k``
    sees items ``k*G .. k*G + G - 1`` split across ranks (``G`` = global batch), and DDP's
    gradient average equals the single-process mean-loss gradient.
    """
    from torch.utils.data import DistributedSampler

    from medseg_helpers.training import distributed
    from medseg_helpers.training.schedules import build_optimizer
    from medseg_helpers.training.trainer import Trainer

    info = distributed.init_from_env("gloo")
    torch.manual_seed(0)
    model = TinyNet()
    global_batch = world_size * rank_batch
    train = DiscDataset(global_batch * steps_per_rank_batch, seed=3)
    val = DiscDataset(6, seed=4)
    if info.is_distributed:
        sampler = DistributedSampler(train, shuffle=False)
        train_loader = DataLoader(train, batch_size=rank_batch, sampler=sampler)
        val_loader = DataLoader(val, batch_size=2, sampler=distributed.ShardSampler(val))
    else:
        train_loader = DataLoader(train, batch_size=global_batch)
        val_loader = DataLoader(val, batch_size=2)
    optimizer = build_optimizer(model.parameters(), "adam", lr=1e-2)
    trainer = Trainer(model, ce_loss, optimizer, train_loader, val_loader, num_classes=2,
                      max_epochs=epochs, device="cpu", progress=False, run_dir=out,
                      tensorboard=False)
    metrics = trainer.fit()
    result = {"params": flat_params(trainer.model).tolist(), "val_dice": metrics["best_val_dice"],
              "train_loss": metrics["train_loss"], "rank": info.rank,
              "world_size": info.world_size}
    del trainer, model
    distributed.cleanup()
    return result


def main() -> None:  # pragma: no cover - runs under torchrun in a subprocess
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = train_reference(2, args.steps, args.epochs, args.run_dir)
    if result["rank"] == 0:
        with open(args.result, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
    assert math.isfinite(result["train_loss"])


if __name__ == "__main__":
    main()
