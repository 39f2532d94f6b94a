"""Start-up configuration: typed, validated once, before traffic.

    settings.py  the one BaseSettings (file, then COMFY_GATEWAY_* variables) and its frozen models
    sources.py   where each value came from (default, file, environment), for errors and `config`
    rules.py     the cross-field rules (names, URLs, duplicates, loops) that stop a bad configuration
    addresses.py where a URL really goes: one canonical host and port per server, with no network
    command.py   `comfy-gateway config`: every effective setting and its source
"""
