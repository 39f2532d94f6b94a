"""The fast data path: an HTTP/1.1 server and client on asyncio Protocols and httptools (uvloop when
installed), carrying out the pipeline's decisions without aiohttp's per-request machinery. Chosen by
`data_path = "fast"` (the default); only the gateway's own routes (/gateway/*, /metrics) and client sockets on
/ws (which follow their prompts on every backend, aio/fanin.py) go to the aiohttp app.

    server.py      listening socket, connections, pools, graceful drain
    connection.py  one client connection: pipelining, keep-alive, flow control, timeouts, lingering close
    reader.py      its bytes parsed into requests under the limits
    request.py     a parsed request head (framing checks; the pipeline's RequestFacts) and its body
    dispatch.py    classify, decide, then carry the decision out: relay, merge, fan out or answer
    relay.py       one request to one upstream and its answer back, streamed or read whole and rewritten
    upstream.py    one connection to an upstream: requests out, answers parsed
    pool.py        the connections to one upstream: reuse, cap, queue, idle expiry
    tunnel.py      a WebSocket after the 101, spliced as bytes (to a backend, or to the app for /ws)
    wsframes.py    WebSocket frame boundaries, and the `executed` messages to rewrite
    wire.py        heads as bytes: the header policy of core/headers.py, the pipeline's Answers
    eager.py       run a decision coroutine inline unless it really waits
    deadlines.py   every timeout as a number, checked by one periodic sweep
    limits.py      every bound, in one frozen value
"""
