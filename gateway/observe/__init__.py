"""Observability: what a request and a backend say about themselves.

    metrics.py          GatewayMetrics: every comfy_gateway_* family, on an injected registry
    metric_families.py  the families, their labels and buckets
    prompt_outcomes.py  a finished prompt's outcome and execution time, read from its history entry
    pollers.py          background polls: queue depth, finished prompts, the store's size
    health.py           the background health check of each backend
    identity.py         what a backend's /system_stats says it is, against its configured kind
    logs.py             the access line, JSON or text, written in batches; URLs shown without secrets
"""
