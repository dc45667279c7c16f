"""Training of the embedded models: resumable tiny DiT run, classifier shapes."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from goc_utils.training import DigitsClassifier, TinyTrainConfig, train_tiny_dit


def test_interrupted_and_resumed_training_equals_one_run(tmp_path):
    config = dict(batch_size=8, warmup=2, checkpoint_every=2, threads=1, ema_decay=0.9)
    one = train_tiny_dit(
        TinyTrainConfig(steps=4, **config), tmp_path / "one", tmp_path / "one.safetensors", progress=False
    )
    train_tiny_dit(
        TinyTrainConfig(steps=2, **config), tmp_path / "two", tmp_path / "partial.safetensors", progress=False
    )
    two = train_tiny_dit(
        TinyTrainConfig(steps=4, **config), tmp_path / "two", tmp_path / "two.safetensors", progress=False
    )
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["final_layer.linear.weight"], torch.zeros_like(a["final_layer.linear.weight"]))
    log = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and log[-1]["loss"] > 0


def test_digits_classifier_shapes():
    model = DigitsClassifier().eval()
    x = torch.randn(5, 1, 8, 8)
    assert model(x).shape == (5, 10) and model.features(x).shape == (5, DigitsClassifier.feature_dim)
