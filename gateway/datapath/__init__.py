"""The two data paths. Each carries out the decisions of gateway.pipeline; neither decides.

    aio/   aiohttp: the app's catch-all route, with its middleware, client session and WebSocket relay
    fast/  asyncio Protocols and httptools: the default public server (`data_path = "fast"`)
"""
