"""`comfy-gateway check`: the first command to run after editing the configuration.

It loads the configuration as `serve` would (exit 2 when it cannot), resolves the backends' host names as
`serve` does at start-up (two names for one server, or a backend that reaches the gateway, are refused there),
then asks every backend what it is and what it has: reachable, the kind it answers as against its configured
`kind`, how many node classes its /object_info lists, how many files per model folder, and whether the target
of each of its `aliases` is among them. One table (or `--json`); exit 0 when every backend is well, 1 when one
is not.

An embedded KernieGen is started for the check (as `serve` would start it) and stopped after, so what is
checked is what `serve` would run; when its port is taken (a gateway is running), what answers there is
checked instead, and the table says which.

    probe.py  the questions asked of each backend, and the table (or JSON) of the answers
"""

from __future__ import annotations

import argparse

from gateway.config.command import add_config_file_argument


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_file_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long each backend may take to answer each question (default 10)",
    )
