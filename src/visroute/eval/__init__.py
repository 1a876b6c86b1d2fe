"""Evaluation: metrics, runs over datasets with cached features, result files, reports."""
