"""The aiohttp data path, and the aiohttp side's shared keys.

    keys.py         typed AppKeys and RequestKeys, declared once
    middlewares.py  the middleware chain: the exchange opened, errors rendered, the exchange finished
    proxy.py        the catch-all handler
    forward.py      requests to backends and their answers streamed back (aiohttp's client)
    websocket.py    one client socket relayed to one backend socket
"""
