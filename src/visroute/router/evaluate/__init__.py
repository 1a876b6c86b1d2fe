"""Judging routers: RouteLLM's metrics, policies and baselines at equal cost, accuracy-cost curves, hierarchy studies."""
