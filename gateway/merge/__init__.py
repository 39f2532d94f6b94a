"""Merged answers made from every backend's reply: GET /history, /queue and /prompt when nothing is selected.
Pure: no I/O (pipeline/merged.py asks the backends).

    replies.py        one merged answer from the replies; a reply that is not JSON leaves its backend out
    aggregate.py      the merge itself: history ordered by time and paged as ComfyUI pages, queues joined
    history_parts.py  each backend's /history reply kept ready, so only what changed is parsed again
    cache.py          merged answers kept with the replies they were made from
"""
