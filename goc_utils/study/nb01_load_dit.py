"""Notebook 01 (load a DiT and sample): the preset's architecture, a grid of samples and the stages of sampling
(noise, the states after some steps, the VAE decode)."""

from __future__ import annotations

from goc_utils.model.presets import model_info
from goc_utils.model.sampler import class_labels, draw_noise, generate, parse_classes
from goc_utils.study.params import StudyParams

__all__ = [  # what notebook 01 uses
    "StudyParams",
    "class_labels",
    "draw_noise",
    "generate",
    "model_info",
    "parse_classes",
]
