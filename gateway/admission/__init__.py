"""Admission state kept per client: rate-limit buckets and counts of open WebSockets. The pipeline decides
with them (pipeline/guard.py); they only count."""
