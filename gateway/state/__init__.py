"""What the gateway remembers: prompt affinity (prompt id → backend) and users' preferred backends.

    store.py         the StateStore interface, its record and error, open_store, retention
    sqlite_store.py  SQLite in WAL mode, calls run on the loop, writes grouped into one commit per turn
    redis_store.py   Redis, shared by replicas anywhere
    lookup_cache.py  a short-lived memory of affinity lookups in front of either
    checkpoint.py    SQLite's WAL checkpointed off the request path
    followers.py     in this process only: the client sockets open on /ws by clientId
"""
