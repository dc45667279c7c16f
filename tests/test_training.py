"""Training of the embedded models: resumable tiny DiT run, classifier shapes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from goc_utils.datasets import load_digits_tensors
from goc_utils.errors import InvalidArgumentError
from goc_utils.model.judges import DigitsClassifier, FashionClassifier
from goc_utils.training.dit import DiTTrainConfig, default_train_config, train_dit
from goc_utils.training.judges import _augment_digits, fit_classifier


def test_interrupted_and_resumed_training_equals_one_run(tmp_path):
    config = dict(batch_size=8, warmup=2, checkpoint_every=2, threads=1, ema_decay=0.9)
    def run(steps: int, folder: str, out: str):
        return train_dit("tiny-digits", DiTTrainConfig(steps=steps, **config), tmp_path / folder, tmp_path / out,
                         progress=False)  # fmt: skip

    one = run(4, "one", "one.safetensors")
    run(2, "two", "partial.safetensors")
    two = run(4, "two", "two.safetensors")
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["final_layer.linear.weight"], torch.zeros_like(a["final_layer.linear.weight"]))
    log = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["loss"] > 0


def test_judge_shapes():
    model = DigitsClassifier().eval()
    x = torch.randn(5, 1, 8, 8)
    assert model(x).shape == (5, 10) and model.features(x).shape == (5, DigitsClassifier.feature_dim)
    fashion = FashionClassifier().eval()
    x = torch.randn(5, 1, 32, 32)
    assert fashion.spatial(x).shape == (5, 128, 8, 8) and fashion.features(x).shape == (5, 256)
    torch.testing.assert_close(fashion(x), fashion.head(fashion.features_from_spatial(fashion.spatial(x))))


def test_each_tiny_preset_has_its_recipe_and_others_are_refused():
    assert default_train_config("tiny-digits").steps == 20_000
    assert default_train_config("tiny-fashion", threads=1).threads == 1
    with pytest.raises(InvalidArgumentError, match="tiny-digits, tiny-fashion"):
        default_train_config("DiT-XL/2")


def test_judge_training_resumes_from_its_epoch_checkpoint_with_identical_weights(tmp_path):
    images, labels = load_digits_tensors()
    x, y = images[:256], labels[:256]

    def fit(epochs: int, checkpoint):
        torch.manual_seed(0)
        return fit_classifier(DigitsClassifier(), x, y, _augment_digits, epochs, 64, 2e-3, 0, "t", False, checkpoint)

    straight = fit(2, None)
    fit(1, tmp_path / "c.pt")  # an interrupted run: one epoch saved
    resumed = fit(2, tmp_path / "c.pt")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
