"""Decisions about a request, as plain values; no sockets.

    classify.py     the ComfyUI contract: endpoint templates, the /api prefix, what routing a path needs
    select.py       selection: header → query → preference → default; unknown names refused
    affinity.py     which backend holds a prompt: the store, else every backend asked
    plan.py         the per-request steps both data paths call
    prompt_body.py  POST /prompt's body: its ids read, a prompt id minted and spliced in
"""
