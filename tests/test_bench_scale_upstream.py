"""The scale benchmark's fake backend: a `--changing` port answers GET /history in bytes that differ from its
previous answer every time, with the same entries as the backend's usual port, so the merge measured after
a change is checked like every other."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from processes import free_port  # noqa: E402


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    ids = tmp_path / "ids.txt"
    ids.write_text("some-prompt\n")
    usual, changing = free_port(), free_port()
    process = subprocess.Popen([sys.executable, str(BENCH / "scale_upstream.py"), "--ids", str(ids),
                                "--history-entries", "5", "--listen", f"alpha={usual}",
                                "--changing", f"alpha={changing}"], cwd=BENCH, stdin=subprocess.DEVNULL)
    urls = {"usual": f"http://127.0.0.1:{usual}", "changing": f"http://127.0.0.1:{changing}"}
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(urls["changing"] + "/queue") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("scale_upstream.py did not open its ports")
        yield urls
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("query", ["", "?max_items=2"], ids=["whole", "paged"])
async def test_a_changing_backend_answers_the_same_entries_in_other_bytes_each_time(upstream, query) -> None:
    async with aiohttp.ClientSession() as http:
        async def body(which: str) -> bytes:
            async with http.get(upstream[which] + "/history" + query) as response:
                assert response.status == 200
                return await response.read()

        usual = await body("usual")
        answers = [await body("changing") for _ in range(3)]
    assert answers[0] != answers[1] != answers[2]
    assert all(json.loads(answer) == json.loads(usual) for answer in answers)
    assert list(json.loads(usual)) and (query == "" or len(json.loads(usual)) == 2)
