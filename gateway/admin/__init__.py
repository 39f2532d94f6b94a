"""The gateway's own HTTP API under /gateway/.

    routes.py  the routing table, users' preferences, where a prompt lives
"""
