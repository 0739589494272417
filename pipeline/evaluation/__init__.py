"""Evaluation: how good a model is (metrics, quality, stress shifts, comparison, drift, fast-path check)."""
