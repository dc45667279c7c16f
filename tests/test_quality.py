"""Quality bar of the committed tiny-digits weights (issue: >= 90% classifier agreement at cfg 4.0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goc_utils import paths
from goc_utils.evaluation.metrics.judges import class_agreement
from goc_utils.model.checkpoints import load_model
from goc_utils.model.judges import load_digits_classifier
from goc_utils.model.sampler import class_labels, generate


def test_committed_weights_exist():
    assert paths.TINY_DIGITS_WEIGHTS.is_file() and paths.DIGITS_CLASSIFIER_WEIGHTS.is_file()


def test_digits_classifier_is_accurate_on_held_out_digits():
    from goc_utils.datasets import load_digits_tensors, train_test_split_indices

    images, labels = load_digits_tensors()
    _, test_idx = train_test_split_indices(len(images), 0.2, 0)
    with torch.no_grad():
        predicted = load_digits_classifier()(images[test_idx]).argmax(1)
    assert (predicted == labels[test_idx]).float().mean().item() >= 0.97


@pytest.mark.slow
def test_tiny_digits_samples_are_recognisable_at_cfg_4():
    """DDIM-20, cfg 4.0, 50 samples per class: the classifier agrees with the label on >= 90%."""
    torch.set_grad_enabled(False)
    model = load_model("tiny-digits")
    labels = class_labels(range(10), 50)
    result = generate(model, labels, seed=0, steps=20, cfg_scale=4.0)
    agreement = class_agreement(result.images, np.asarray(labels))
    assert agreement >= 0.90, f"class agreement {agreement:.3f} < 0.90"
