"""Inputs: image files, class names, prompt templates."""
