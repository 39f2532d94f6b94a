"""What `comfy-gateway check` asks each backend, and the table it prints (the command: check/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway.app import build_backend_table, start_embedded
from gateway.backends.reach import reach_problems
from gateway.backends.table import Backend
from gateway.config.settings import ConfigError, LoadedSettings, Settings, load_settings, server_urls
from gateway.core.errors import UpstreamError
from gateway.core.redact import redact_secrets, shown_url
from gateway.datapath.aio.forward import Forwarder, create_client_session
from gateway.inventory.files import INPUT_FOLDER
from gateway.inventory.model import Inventory, InventoryError, read_object_info
from gateway.observe.identity import Identity, mismatch, read_identity

CHECK_HEADERS = {"User-Agent": "comfy-gateway check"}
OBJECT_INFO_MAX_BYTES = 64 * 1024 * 1024  # a real ComfyUI with many custom nodes lists several MB


@dataclass
class BackendReport:
    name: str
    url: str
    kind: str
    default: bool
    embedded: str | None = None  # "started for this check" | "already running" | None (not embedded)
    reachable: bool = False
    refused: bool = False  # `serve` refuses it (names for one server, or a loop)
    identity: Identity | None = None
    node_classes: int | None = None
    files: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, dict[str, object]] = field(default_factory=dict)  # name -> {target, present}
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        seen = self.identity
        return {
            "name": self.name,
            "url": self.url,
            "default": self.default,
            "embedded": self.embedded,
            "kind": self.kind,
            "reachable": self.reachable,
            "seen_kind": seen.kind if seen else None,
            "seen_version": seen.version if seen else None,
            "comfyui_version": seen.comfyui_version if seen else None,
            "node_classes": self.node_classes,
            "files": self.files,
            "aliases": self.aliases,
            "ok": self.ok,
            "problems": self.problems,
        }


def run_check_command(
    args: argparse.Namespace, *, env: Mapping[str, str] | None = None, out: TextIO | None = None
) -> int:
    """0: every backend is well; 1: one is unreachable or wrong; 2: the configuration cannot be loaded."""
    out = out or sys.stdout
    try:
        loaded = load_settings(args.config, env)
    except ConfigError as exc:
        print(redact_secrets(f"comfy-gateway check: {exc}"), file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("comfy-gateway check: --timeout must be above 0", file=sys.stderr)
        return 2
    reports, refusals = asyncio.run(check_backends(loaded.settings, args.timeout))
    rendered = render_json(loaded, reports, refusals) if args.json else render_text(loaded, reports, refusals)
    print(redact_secrets(rendered), file=out)
    return 0 if all(r.ok for r in reports) and not refusals else 1


async def check_backends(settings: Settings, timeout: float) -> tuple[list[BackendReport], list[str]]:
    """A report per backend, and what would make `serve` refuse to start (names for one server, loops)."""
    table = build_backend_table(settings)
    reports = {name: BackendReport(name, shown_url(b.url), b.kind, table.is_default(name)) for name, b in table.items()}
    reach = await reach_problems(
        server_urls(settings.backends),
        settings.listen_host,
        settings.listen_port,
        timeout_seconds=settings.guardrails.address_lookup_seconds,
    )
    refusals = [str(problem) for problem in reach]
    for problem in reach:
        for name in problem.backends:
            reports[name].problems.append(str(problem))
            reports[name].refused = True
    async with contextlib.AsyncExitStack() as stack:
        for name, configured in settings.backends.items():
            if configured.embedded and not any(p.loop for p in reach if name in p.backends):
                try:
                    server = await start_embedded(settings, name, configured)
                except OSError:  # its port is taken: most likely by a running gateway's own KernieGen
                    reports[name].embedded = "already running (its port is taken)"
                else:
                    stack.push_async_callback(server.close)
                    reports[name].embedded = "started for this check and stopped after, as serve starts it"
        session = await stack.enter_async_context(create_client_session())
        calls = Forwarder(session, max_body_bytes=OBJECT_INFO_MAX_BYTES, max_ws_message_bytes=1 << 20)
        await asyncio.gather(
            *(
                _probe(calls, backend, settings.backends[name].aliases, reports[name], timeout)
                for name, backend in table.items()
                if not any(p.loop for p in reach if name in p.backends)  # asking it would ask ourselves
            )
        )
    return list(reports.values()), refusals


async def _probe(
    calls: Forwarder, backend: Backend, aliases: Mapping[str, str], report: BackendReport, timeout: float
) -> None:
    try:
        report.identity = await read_identity(calls, backend, dict(CHECK_HEADERS), timeout)
    except UpstreamError as exc:
        report.problems.append(f"unreachable: {exc.message}")
        return
    report.reachable = True
    problem = mismatch(backend.kind, report.identity)
    if problem is not None:
        report.problems.append(problem)
    try:
        reply = await calls.fetch(
            backend, "GET", "/object_info", CHECK_HEADERS, timeout_seconds=timeout, max_bytes=OBJECT_INFO_MAX_BYTES
        )
        if reply.status != 200:
            raise InventoryError(f"answered {reply.status}")
        inventory = read_object_info(reply.body)
    except (UpstreamError, InventoryError) as exc:
        shown = exc.message if isinstance(exc, UpstreamError) else str(exc)
        report.problems.append(f"GET /object_info failed: {shown}")
        return
    report.node_classes = len(inventory.nodes)
    report.files = {folder: len(names) for folder, names in inventory.files.items() if folder != INPUT_FOLDER}
    for alias, target in aliases.items():
        present = _has_file(inventory, target)
        report.aliases[alias] = {"target": target, "present": present}
        if not present:
            report.problems.append(f"alias {alias!r} -> {target!r}: {target!r} is not among its model files")


def _has_file(inventory: Inventory, name: str) -> bool:
    return any(name in names for folder, names in inventory.files.items() if folder != INPUT_FOLDER)


# --- output ---------------------------------------------------------------------------------------------------


def render_json(loaded: LoadedSettings, reports: list[BackendReport], refusals: list[str]) -> str:
    return json.dumps(
        {
            "config": str(loaded.config_path) if loaded.config_path else None,
            "ok": all(r.ok for r in reports) and not refusals,
            "serve_refuses": refusals,
            "backends": [r.as_json() for r in reports],
        },
        indent=2,
    )


def render_text(loaded: LoadedSettings, reports: list[BackendReport], refusals: list[str]) -> str:
    source = str(loaded.config_path) if loaded.config_path else "built-in defaults and environment"
    lines = [f"comfy-gateway check: configuration from {source}", ""]
    header = ("BACKEND", "URL", "KIND", "ANSWERS AS", "NODES", "MODEL FILES", "STATUS")
    rows = [header, *(_row(r) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    lines.append("(* the default backend)")
    notes = [f"  {r.name}: embedded KernieGen, {r.embedded}" for r in reports if r.embedded]
    if notes:
        lines += ["", *notes]
    aliases = [
        f"  {r.name}: {alias} -> {info['target']} ({'present' if info['present'] else 'MISSING'})"
        for r in reports
        for alias, info in r.aliases.items()
    ]
    if aliases:
        lines += ["", "aliases:", *aliases]
    problems = [
        f"  {r.name}: {problem}" + "".join(f"\n  {' ' * len(r.name)}  ({hint})" for hint in _hints(problem))
        for r in reports
        for problem in r.problems
    ]
    if problems:
        lines += ["", "problems:", *problems]
    if refusals:
        lines += ["", "`comfy-gateway serve` refuses to start with this configuration:", *(f"  {p}" for p in refusals)]
    bad = sum(1 for r in reports if not r.ok)
    lines += [
        "",
        f"all {len(reports)} backends are well" if not bad else f"{bad} of {len(reports)} backends need attention",
    ]
    return "\n".join(lines)


def _hints(problem: str) -> list[str]:
    """What to do about a problem, for the person reading the table."""
    if problem.startswith("configured as kind"):
        return ["its url reaches another server than meant (two urls swapped?): fix the url, or its kind"]
    if problem.startswith("unreachable"):
        return ["is it running? serve starts without it, and answers 502 for what is sent to it"]
    if problem.startswith("alias"):
        return ["prompts naming the alias would ask this backend for a file it does not have"]
    return []


def _row(report: BackendReport) -> tuple[str, str, str, str, str, str, str]:
    seen = report.identity.describe() if report.identity else "-"
    files = ", ".join(f"{folder} {count}" for folder, count in report.files.items() if count) or "-"
    if report.ok:
        status = "ok"
    elif report.refused:
        status = "REFUSED"
    elif not report.reachable:
        status = "UNREACHABLE"
    else:
        status = "WRONG"
    name = report.name + (" *" if report.default else "")
    nodes = str(report.node_classes) if report.node_classes is not None else "-"
    return (name, report.url, report.kind, seen, nodes, files, status)
