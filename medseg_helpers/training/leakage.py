"""What a slice-level split does to validation Dice, measured (notebook 01).

Neighbouring slices of one scan are nearly the same image. Split slices at random and
nearly every validation slice has a twin in the training set, so validation grades the
model on patients it has seen. `slice_split_leakage` measures the inflation with one small
training: a random quarter of the patients is held out entirely ("unseen"); the slices
of the others are split at random into training and validation slices (the leaky,
slice-level split); one U-Net trains on the training slices; then the same model is
scored on the leaky validation slices and on every slice of the unseen patients, with
the same Dice (`training.validation.validate_model`: summed over the slices, per class).
The gap between the two numbers is what a slice-level split hides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from medseg_helpers.data.datasets import SliceDataset, make_dataloader
from medseg_helpers.data.slice_cache import SliceCache
from medseg_helpers.losses import DiceCELoss
from medseg_helpers.networks.unet import UNet
from medseg_helpers.training.schedules import build_optimizer
from medseg_helpers.training.trainer import Trainer
from medseg_helpers.training.validation import validate_model

__all__ = ["slice_split_leakage"]


def slice_split_leakage(cache: SliceCache, patient_ids: Sequence[str], class_names: Sequence[str],
                        *, unseen_fraction: float = 0.25, val_fraction: float = 0.2,
                        steps: int = 150, batch_size: int = 16, base_channels: int = 8,
                        lr: float = 5e-3, seed: int = 0, device: str | torch.device = "cpu"
                        ) -> dict[str, float]:
    """Train on a slice-level split; score on its validation slices and on unseen patients.

    Args:
        cache: preprocessed slices (`data.slice_cache.build_slice_cache`).
        patient_ids: the patients to use (at least 2).
        class_names: foreground class names, in label order (for the ``dice_<name>`` keys).
        unseen_fraction: share of patients held out entirely (at least one).
        val_fraction: share of the other patients' slices used as (leaky) validation.
        steps: optimiser steps (whole epochs over the training slices, rounded up).
        batch_size, base_channels, lr, seed: the small U-Net's training (depth 3, batch
            norm, Dice + cross-entropy without background, AdamW).
        device: where to train.

    Returns:
        ``{"seen_patients", "unseen_patients", "train_slices", "leaky_val_slices",
        "leaky_val_dice", "unseen_dice", "leaky_val_dice_<name>", "unseen_dice_<name>"...}``:
        mean foreground Dice and per class.

    Raises:
        ValueError: fewer than two patients, or fractions outside (0, 1).
    """
    ids = [str(p) for p in patient_ids]
    if len(ids) < 2:
        raise ValueError(f"need at least two patients, got {len(ids)}")
    for name, value in (("unseen_fraction", unseen_fraction), ("val_fraction", val_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    n_unseen = min(len(ids) - 1, max(1, round(unseen_fraction * len(ids))))
    unseen, seen = order[:n_unseen], order[n_unseen:]
    seen_slices = SliceDataset(cache, seen, seed=seed)
    shuffled = rng.permutation(len(seen_slices))
    n_val = max(1, round(val_fraction * len(seen_slices)))
    leaky_val = Subset(seen_slices, shuffled[:n_val].tolist())
    train = Subset(seen_slices, shuffled[n_val:].tolist())
    num_classes = len(class_names) + 1
    torch.manual_seed(seed)
    model = UNet(2, int(cache.images.shape[1]), num_classes, base_channels=base_channels,
                 depth=3)
    loss = DiceCELoss(include_background=False, batch=True)
    train_loader = make_dataloader(train, batch_size, shuffle=True, seed=seed, drop_last=True)
    trainer = Trainer(model, loss, build_optimizer(model.parameters(), "adamw", lr=lr),
                      train_loader, None, num_classes=num_classes, device=device,
                      max_epochs=math.ceil(steps / max(1, len(train_loader))),
                      progress=False, tensorboard=False)
    trainer.fit()
    result: dict[str, float] = {"seen_patients": len(seen), "unseen_patients": len(unseen),
                                "train_slices": len(train), "leaky_val_slices": len(leaky_val)}
    for name, dataset in (("leaky_val", leaky_val), ("unseen", SliceDataset(cache, unseen))):
        scores = validate_model(model, make_dataloader(dataset, batch_size), loss, num_classes,
                                list(class_names), trainer.device)
        result[f"{name}_dice"] = scores["val_dice"]
        result.update({f"{name}_dice_{c}": scores[f"dice_{c}"] for c in class_names})
    return result
