"""Routing: benchmark records -> routing table -> learned router -> cost-aware choice of model per task."""
