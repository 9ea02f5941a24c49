"""Make each epoch's data a function of ``(seed, epoch, rank)``, for exact resume.

A DataLoader draws its shuffling seed from the global torch RNG unless it has its own
``generator``. `seed_epoch` re-seeds such generators and the dataset's augmentation
(``dataset.reseed``) at each epoch from `epoch_seed`, and calls ``set_epoch(epoch)`` on
samplers and datasets that have it (``DistributedSampler``, `SliceDataset`), so a run
interrupted after epoch ``k`` and resumed from its checkpoint replays epochs ``k+1...``
exactly. Not covered: augmentation inside *persistent* DataLoader workers (their streams
restart on resume) and non-deterministic GPU kernels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch, rank)``, used to re-seed data each epoch."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def seed_epoch(loader: Iterable, seed: int, epoch: int) -> None:
    """Seed epoch ``epoch`` of ``loader`` with ``seed`` (from `epoch_seed`) where possible.

    Re-seeds the loader's and sampler's ``generator`` (shuffling, worker seeds), calls
    ``dataset.reseed(seed % 2**32)`` (augmentation in the main process, i.e.
    ``num_workers=0``) and ``set_epoch(epoch)`` of sampler and dataset. Persistent workers
    keep their own augmentation streams, so with them a resumed run differs in augmentation
    only.
    """
    sampler, dataset = getattr(loader, "sampler", None), getattr(loader, "dataset", None)
    for owner in (loader, sampler):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
    if callable(getattr(dataset, "reseed", None)):
        dataset.reseed(seed % 2**32)
    for owner in (sampler, dataset):
        if callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
