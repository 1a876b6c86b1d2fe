"""Helpers for tests and benchmarks (fault servers, constructed records); the product never imports it."""
