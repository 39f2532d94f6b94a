"""The gateway's own HTTP API (aiohttp routes), answered by the app on either data path.

    routes.py         /gateway/backends, /gateway/preferences/{user}, /gateway/prompts/{prompt_id}
    health_routes.py  /gateway/health (liveness) and /gateway/ready (readiness)
    metrics_route.py  /metrics
    console.py        /gateway/console: the operators' page and its data (console_data.py), page files in
                      console_static/
"""
