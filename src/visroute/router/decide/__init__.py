"""Choosing a model per task: decision rules, the trained router bundle, strategies (cascade, ensemble) and routing one task end to end."""
