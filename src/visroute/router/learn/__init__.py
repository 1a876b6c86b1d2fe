"""Routers: estimators that learn each model's success probability for a task, and saving them as data."""
