"""Self-supervised inpainting: corruption, dataset, a short pretext training, weight transfer."""

import numpy as np
import pytest
import torch

from medseg_helpers.networks import UNet
from medseg_helpers.training.pretraining import (
    InpaintingDataset,
    corrupt_image,
    pretrain_inpainting,
    transferable_weights,
)


class FakeCache:
    """The two attributes of `slice_cache.SliceCache` the dataset reads."""

    def __init__(self, slices=6, size=16):
        rng = np.random.default_rng(0)
        self.images = rng.normal(size=(slices, 1, size, size)).astype(np.float32)
        self.cases = {"a": type("C", (), {"start": 0, "stop": 3})(),
                      "b": type("C", (), {"start": 3, "stop": slices})()}


def test_corrupt_image_zeroes_holes_and_keeps_shape():
    image = np.ones((1, 20, 20), dtype=np.float32)
    corrupted, mask = corrupt_image(image, np.random.default_rng(0), num_holes=1,
                                    hole_fraction=0.25, noise_std=0.0)
    assert corrupted.shape == image.shape and mask.shape == (1, 20, 20)
    assert mask.sum() == 25  # one 5 x 5 hole (0.25 * 20)
    assert (corrupted[mask.astype(bool)] == 0).all() and (corrupted[mask == 0] == 1).all()


def test_dataset_items_are_seeded_per_epoch():
    data = InpaintingDataset(FakeCache(), ["b"], seed=1)
    assert len(data) == 3
    first = data[0]
    assert torch.equal(first["image"], data[0]["image"])
    assert torch.equal(first["target"], torch.from_numpy(FakeCache().images[3]))
    data.set_epoch(1)
    assert not torch.equal(first["image"], data[0]["image"])


def test_dataset_rejects_unknown_patients():
    with pytest.raises(KeyError, match="not in the cache"):
        InpaintingDataset(FakeCache(), ["zz"])


def test_pretraining_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    model = UNet(2, 1, 1, base_channels=4, depth=2)
    data = InpaintingDataset(FakeCache(slices=8), ["a", "b"], noise_std=0.1)
    result = pretrain_inpainting(model, data, steps=30, batch_size=8, lr=3e-3)
    assert result.steps == 30 and len(result.losses) == 30
    assert result.losses[-1] < result.losses[0]
    assert not model.training


def test_pretraining_needs_steps():
    data = InpaintingDataset(FakeCache(), ["a"])
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_inpainting(UNet(2, 1, 1, base_channels=4, depth=2), data, steps=0)


def test_transfer_moves_matching_weights_and_skips_the_head():
    pretext, segmenter = UNet(2, 1, 1, 4, depth=2), UNet(2, 1, 3, 4, depth=2)
    weights = transferable_weights(pretext, segmenter)
    assert "head.weight" not in weights and "stem.0.weight" in weights
    missing, unexpected = segmenter.load_state_dict(weights, strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected
    assert torch.equal(segmenter.stem[0].weight, pretext.stem[0].weight)
    encoder_only = transferable_weights(pretext.state_dict(), segmenter, ("stem.", "downs."))
    assert encoder_only and all(k.startswith(("stem.", "downs.")) for k in encoder_only)
