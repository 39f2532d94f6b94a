"""Answers made from every backend at once: GET /history, /queue and /prompt when nothing is selected.

    answer.py         ask every backend, leave out the ones down, merge, answer
    aggregate.py      the merge itself: history ordered by time and paged as ComfyUI pages, queues joined
    history_parts.py  each backend's /history reply kept ready, so only what changed is parsed again
    cache.py          merged answers kept with the replies they were made from
"""
