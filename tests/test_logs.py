"""Log lines written in batches: held until a flush, a warning or the size bound; never lost at exit."""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.exchange import Exchange
from gateway.observe.access import AccessLine, milliseconds_text
from gateway.observe.logs import (
    BatchingStreamHandler,
    JsonFormatter,
    TextFormatter,
    access_log,
    flush_logs_periodically,
    log_exchange,
)
from tests.conftest import serve_app
from tests.ports import free_port
from tests.recording_backend import RecordingBackend


def batching_logger(max_bytes: int = 64 * 1024) -> tuple[logging.Logger, io.StringIO, BatchingStreamHandler]:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, max_bytes=max_bytes)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test-batching-{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    return logger, stream, handler


def test_lines_wait_for_a_flush_and_keep_their_order() -> None:
    logger, stream, handler = batching_logger()
    logger.info("one")
    logger.info("two")

    assert stream.getvalue() == ""
    handler.flush()
    assert stream.getvalue() == "INFO one\nINFO two\n"


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    logger, stream, _ = batching_logger()
    logger.info("served")
    logger.warning("backend down")

    assert stream.getvalue() == "INFO served\nWARNING backend down\n"


def test_the_batch_is_bounded_in_bytes() -> None:
    logger, stream, _ = batching_logger(max_bytes=100)
    for index in range(30):
        logger.info("line %02d", index)

    written = stream.getvalue().splitlines()
    assert written == [f"INFO line {i:02d}" for i in range(len(written))]
    assert (30 - len(written)) * len("INFO line 00\n") < 100  # what still waits is under the bound


def test_the_text_formatter_keeps_logging_s_layout() -> None:
    record = logging.LogRecord("comfy_gateway.access", logging.INFO, __file__, 1, "GET %s", ("/queue",), None)
    record.created, record.msecs = 1764030561.25, 250.0
    reference = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    assert TextFormatter().format(record) == reference.format(record)


def an_exchange(path: str = "/history/abc") -> Exchange:
    exchange = Exchange("GET", path, "/history/{prompt_id}", backend="comfyui", source="affinity", status=200,
                        prompt_id="abc", bytes_out=2048, upstream_errors=(("gpu-2", "timeout"),))
    exchange.finish()
    return exchange


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter], ids=["text", "json"])
@pytest.mark.parametrize("created", [1764030561.25, 1764030561.0, 1764030561.9996, 1764030562.001])
def test_an_access_line_made_directly_is_the_line_logging_makes(formatter: type, created: float) -> None:
    line = AccessLine(an_exchange())
    record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 1, "%s", (line,), None,
                                   extra={"access": line})
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0

    assert formatter().format_access(line, created) == formatter().format(record)


@pytest.fixture
def gateway_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger as the gateway configures it (one batching handler, the text format), restored after."""
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    monkeypatch.setattr(logging.root, "handlers", [handler])
    levels = logging.root.level, access_log.level
    logging.root.setLevel(logging.INFO)  # setLevel, which also clears the loggers' cached answers
    access_log.setLevel(logging.NOTSET)
    yield stream
    logging.root.setLevel(levels[0])
    access_log.setLevel(levels[1])


def test_the_access_line_goes_to_the_sole_batching_handler_as_logging_would_write_it(gateway_logging) -> None:
    log_exchange(an_exchange())
    logging.root.handlers[0].flush()

    written = gateway_logging.getvalue()
    assert written.endswith(" INFO comfy_gateway.access: GET /history/abc 200 "
                            f"{written.split(' 200 ')[1].split('ms')[0]}ms endpoint=/history/{{prompt_id}} "
                            "backend=comfyui route=affinity bytes_in=0 bytes_out=2048 prompt_id=abc "
                            "upstream_errors=gpu-2:timeout\n")


def test_anything_else_listening_gets_the_access_record_through_logging(gateway_logging) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    access_log.addHandler(keeper := Keep())
    try:
        log_exchange(an_exchange())
    finally:
        access_log.removeHandler(keeper)
    logging.root.handlers[0].flush()

    assert [record.getMessage().split(" ")[:3] for record in seen] == [["GET", "/history/abc", "200"]]
    assert isinstance(seen[0].exchange, Exchange)  # for whoever reads the fields
    assert gateway_logging.getvalue().count("comfy_gateway.access: GET /history/abc 200") == 1  # and once here


def test_no_access_line_below_its_level(gateway_logging) -> None:
    access_log.setLevel(logging.WARNING)
    log_exchange(an_exchange())
    logging.root.handlers[0].flush()

    assert gateway_logging.getvalue() == ""


async def test_the_periodic_flush_writes_waiting_lines() -> None:
    logger, stream, handler = batching_logger()
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]  # flush_logs flushes the root's handlers
    flusher = asyncio.create_task(flush_logs_periodically(0.05))
    try:
        logger.info("waiting")
        deadline = time.monotonic() + 2
        while "waiting" not in stream.getvalue() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert stream.getvalue() == "INFO waiting\n"
    finally:
        flusher.cancel()
        root.handlers[:] = saved


async def test_a_running_gateway_writes_access_lines_within_the_interval_and_at_exit(tmp_path: Path) -> None:
    backend = RecordingBackend("alpha")
    runner, backend_url = await serve_app(backend.app())
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'listen_port = {port}\ndefault_backend = "alpha"\nlog_batch_seconds = 0.2\nstate_dir = "{tmp_path}"\n'
        f'[store]\npath = "{tmp_path / "gateway.sqlite3"}"\n[backends.alpha]\nurl = "{backend_url}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    log_path = tmp_path / "stderr.txt"
    with log_path.open("w") as log_file:
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                   stderr=log_file, env=env, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_listening(http, port)
            async with http.get(f"http://127.0.0.1:{port}/queue") as r:
                assert r.status == 200
            seen = await wait_for_text(log_path, "GET /queue 200", seconds=3)
            assert seen, f"no access line within 3 s:\n{log_path.read_text()}"
            async with http.get(f"http://127.0.0.1:{port}/object_info") as r:
                assert r.status == 200
        gateway.send_signal(signal.SIGTERM)  # the last line still waits in the batch: the exit writes it
        gateway.wait(20)
        assert "GET /object_info 200" in log_path.read_text()
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(5)
        await runner.cleanup()


async def wait_listening(http: aiohttp.ClientSession, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with http.get(f"http://127.0.0.1:{port}/gateway/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "the gateway did not start within 30 s"
        await asyncio.sleep(0.1)


async def wait_for_text(path: Path, text: str, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        await asyncio.sleep(0.02)
    return False


@given(st.floats(min_value=0, max_value=86_400, allow_nan=False))
def test_a_duration_is_written_to_the_nearest_tenth_of_a_millisecond(seconds: float) -> None:
    text = milliseconds_text(seconds)

    whole, _, tenth = text.partition(".")
    assert whole.isdigit() and len(tenth) == 1 and tenth.isdigit()
    assert math.isclose(float(text), seconds * 1000, abs_tol=0.05 + 1e-9)


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "0.0"), (-1.0, "0.0"), (0.00004, "0.0"), (0.00005, "0.1"),
                                                (0.0012, "1.2"), (0.01999, "20.0"), (12.3456, "12345.6")])
def test_durations_read_as_logs_show_them(seconds: float, text: str) -> None:
    assert milliseconds_text(seconds) == text


@pytest.mark.parametrize("msecs", [0.0, 7.0, 999.0, 1000.0, 12345.0])
def test_the_time_stamp_writes_any_record_s_milliseconds_as_logging_does(msecs: float) -> None:
    record = logging.LogRecord("comfy_gateway", logging.INFO, __file__, 1, "hello", (), None)
    record.created, record.msecs = 1764030561.0, msecs
    reference = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    assert TextFormatter().format(record) == reference.format(record)
