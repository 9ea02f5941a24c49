"""MONAI bundle layout: a network saved with `save_bundle` comes back from `load_bundle`
(through MONAI's own ConfigParser) computing exactly the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from medseg_helpers.networks import UNet
from medseg_helpers.networks.bundle import BUNDLE_FILES, bundle_metadata, load_bundle, save_bundle
from medseg_helpers.training.pretraining import transferable_weights

NETWORK_DEF = {"_target_": "medseg_helpers.networks.build_model", "name": "unet",
               "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "base_channels": 4,
               "depth": 2}


def _metadata() -> dict:
    return bundle_metadata(name="tiny U-Net", version="0.1.0", description="a test",
                           class_names=["background", "organ", "lesion"], in_channels=1,
                           spatial_dims=2, authors="tests", license="CC0",
                           data_source="noise", intended_use="tests only")


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=2)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 16, 16))  # batch-norm statistics away from their init
    model.eval()
    return model, save_bundle(tmp_path / "bundle", model, NETWORK_DEF, _metadata(), "# tiny",
                              extra_config={"preprocessing": {"normalisation": "zscore"}})


def test_a_saved_bundle_has_the_zoo_layout(saved):
    _, folder = saved
    assert all((folder / name).is_file() for name in BUNDLE_FILES)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    assert config["network_def"] == NETWORK_DEF and config["preprocessing"]["normalisation"]
    outputs = json.loads((folder / "configs" / "metadata.json").read_text())[
        "network_data_format"]["outputs"]["pred"]
    assert outputs["num_channels"] == 3 and outputs["channel_def"]["2"] == "lesion"


def test_load_bundle_computes_the_same_logits(saved):
    model, folder = saved
    loaded, metadata = load_bundle(folder)
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training and metadata["name"] == "tiny U-Net"


def test_monai_config_parser_builds_the_same_network_from_the_bundle(saved):
    from monai.bundle import ConfigParser

    _, folder = saved
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    built = parser.get_parsed_content("network_def")
    assert isinstance(built, UNet)
    assert built.state_dict().keys() == saved[0].state_dict().keys()


def test_a_bundle_starts_a_new_task_with_every_layer_but_the_head(saved):
    model, folder = saved
    loaded, _ = load_bundle(folder)
    two_classes = UNet(2, 1, 2, base_channels=4, depth=2)
    weights = transferable_weights(loaded, two_classes)
    assert set(two_classes.state_dict()) - set(weights) == {"head.weight", "head.bias"}


def test_missing_files_and_a_network_without_target_are_named(tmp_path, saved):
    (saved[1] / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="not a bundle, missing models/model.pt"):
        load_bundle(saved[1])
    with pytest.raises(ValueError, match="needs a '_target_'"):
        save_bundle(tmp_path / "x", saved[0], {"name": "unet"}, _metadata(), "")
