"""The fast data path: an HTTP/1.1 server and client on asyncio Protocols and httptools (uvloop when
installed), making the same decisions as proxy.py through the same functions, without aiohttp's per-request
machinery. Chosen by `data_path = "fast"`; whatever it does not answer itself goes to the aiohttp app.

    server.py      listening socket, connections, pools, graceful drain
    connection.py  one client connection: pipelining, keep-alive, flow control, timeouts, lingering close
    reader.py      its bytes parsed into requests under the limits
    request.py     a parsed request head (framing checks) and its body as it arrives
    dispatch.py    classify, check, decide, then relay to a backend or hand to the aiohttp app
    decide.py      proxy.handle's decisions as a value (Forward | Delegate)
    relay.py       one request to one upstream and its answer back, streamed or rewritten
    history.py     a /history answer rewritten in the backend's own bytes
    upstream.py    one connection to an upstream: requests out, answers parsed
    pool.py        the connections to one upstream: reuse, cap, queue, idle expiry
    tunnel.py      a WebSocket after the 101, spliced as bytes
    wsframes.py    WebSocket frame boundaries, and the `executed` messages to rewrite
    wire.py        heads as bytes: the header policy of headers.py, the gateway's own answers
    eager.py       run a decision coroutine inline unless it really waits
    deadlines.py   every timeout as a number, checked by one periodic sweep
    limits.py      every bound, in one frozen value
"""
