"""Helpers for smoke tests and test fixtures (random-weight models); not for real predictions."""
