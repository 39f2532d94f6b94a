"""Output refs: the `{filename, subfolder, type}` triples in ComfyUI JSON, prefixed with the backend's name
so that every ref resolves through the gateway's /view and on disk under one root.

    refs.py  prefixing refs in /history and WebSocket `executed` messages; parsing a /view ref
    root.py  output_root/<backend> kept linked to each backend's output directory
"""
