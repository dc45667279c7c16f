"""Metrics of the study: the ADM evaluator's formulas, feature extractors, batches, fidelity, judges."""
