"""Decisions about a request, as values, for both data paths; no sockets. Read decide.py first.

    classify.py     the ComfyUI contract: endpoint templates, the /api prefix, the facts a request presents
    select.py       selection: header → query → preference → default; unknown names refused
    affinity.py     which backend holds a prompt: the store, else every backend asked (then remembered)
    prompt_body.py  POST /prompt's body: its ids read, a prompt id minted and spliced in
    decision.py     the values: Forward | Merge | FanOut | Answer
    decide.py       decide(): the one place that branches on the routing kind
    merged.py       Merge and FanOut carried out through the BackendCalls seam
    outcome.py      after the answer: errors rendered, a rejected prompt forgotten, the exchange finished
"""
