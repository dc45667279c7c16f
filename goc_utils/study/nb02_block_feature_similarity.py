"""Notebook 02 (block-feature similarity): the priors of the run (plotted by :mod:`goc_utils.study.viz`)."""

from __future__ import annotations

from goc_utils.study.params import StudyParams, load_or_extract_priors

__all__ = [  # what notebook 02 uses
    "StudyParams",
    "load_or_extract_priors",
]
