"""The aiohttp data path, and the aiohttp side's shared keys.

    keys.py         typed AppKeys and RequestKeys, declared once
    middlewares.py  the middleware chain: the exchange opened, errors rendered, the exchange finished
    proxy.py        the catch-all handler
    forward.py      requests to backends and their answers streamed back (aiohttp's client)
    websocket.py    a client socket on /ws: its selected backend opened, the client upgraded (both data paths)
    fanin.py        that socket following its prompts on every backend: merged, ordered, bounded, reconnected
    backend_socket.py  a backend's socket: aiohttp's client, its frames split as they come, progress passed as sent
    client_socket.py   the client's socket: aiohttp's server side, masks checked, bursts written at once
"""
