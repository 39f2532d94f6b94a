"""The shared vocabulary every layer may use, importing nothing else of the gateway.

    errors.py      the error tree: each error the gateway answers, with its status and stable code
    exchange.py    the per-request record that logging and metrics read at the end
    headers.py     header names and the header policy of both directions
    selection.py   a selection: the backend chosen and why (Source)
    redact.py      secrets kept out of logs, errors and answers
    json_codec.py  JSON read without building what is only passed on, and written fast
    startup.py     start-up failures the command line reports with their setting (CannotListen)
"""
