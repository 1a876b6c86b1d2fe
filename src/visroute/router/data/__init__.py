"""Routing data: benchmark records, the routing table, importers (RouteLLM), the measurement grid, data checks and the task / image features routers read."""
