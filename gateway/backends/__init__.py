"""The named backends the gateway forwards to, and the one seam for calling them.

    table.py  the routing table: name → URL and client timeouts, plus the default
    calls.py  BackendCalls: a whole-answer call to a backend (merges, probes, fan-outs, checks), and its Reply
    reach.py  host names resolved once at start-up: two backends on one server, or one on the gateway itself
"""
