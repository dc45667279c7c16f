"""Metrics of the study (feature extractors and scores)."""
