"""The named backends the gateway forwards to.

    table.py  the routing table: name → URL and client timeouts, plus the default
"""
