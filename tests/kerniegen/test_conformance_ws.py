"""WebSocket conformance with the recorded ComfyUI sessions: the same frame types in the same order
(and each frame shaped like the recorded one) for the lifecycle, cached re-run, batch, preview,
binary image and text frames, run-time errors, broadcasts, interrupts and reconnects."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.kerniegen.config import Faults
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.transcript_replay import Replayer, exchanges, load
from tests.kerniegen.workflows import slow_chain
from tests.kerniegen.ws_sessions import (
    Frame,
    assert_frames_like,
    assert_silent,
    collapse_progress,
    connect,
    receive,
    receive_until,
    recorded_frames,
    recorded_name,
)

# Transcripts whose sessions all open before the prompt and whose frames do not depend on timing.
STRAIGHT_RUNS = [
    "06_ws_prompt_lifecycle.json",
    "06_ws_batch2_save.json",
    "06_ws_preview_image_temp.json",
    "06_ws_binary_saveimagewebsocket_legacy.json",
    "06_ws_binary_saveimagewebsocket_metadata.json",
    "06_ws_binary_text_getimagesize.json",
    "06_ws_execution_error.json",
]


async def replay_straight_run(server: KernieGenServer, http: aiohttp.ClientSession, name: str) -> Replayer:
    """Open the recorded sockets, submit the recorded prompt, compare every socket's frames, then
    compare the history entry."""
    transcript = load(name)
    sockets = [await connect(http, server.url, session) for session in transcript["ws_sessions"]]
    replayer = Replayer(http, server.url)
    post, *later = exchanges(transcript)
    await replayer.replay(post)
    for ws, session in zip(sockets, transcript["ws_sessions"], strict=True):
        recorded = recorded_frames(session)
        frames = await receive(ws, len(recorded))
        assert_frames_like(recorded, frames)
        await assert_silent(ws)
        first = frames[0].data["data"]
        assert first["sid"] == (session["client_id_param"] or first["sid"]) and len(first["sid"]) >= 1
    for item in later:
        await replayer.wait_for_history(replayer.ids[post["response"]["body"]["json"]["prompt_id"]])
        await replayer.replay(item)
    for ws in sockets:
        await ws.close()
    return replayer


@pytest.mark.parametrize("name", STRAIGHT_RUNS)
async def test_prompt_frames_match_the_recording(
    name: str, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    await replay_straight_run(kerniegen, http, name)


async def test_identical_prompt_is_served_from_cache(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    await replay_straight_run(kerniegen, http, "06_ws_prompt_lifecycle.json")
    await replay_straight_run(kerniegen, http, "06_ws_cached_rerun.json")
    assert len(list((kerniegen.state.dirs.output / "gwref").iterdir())) == 1  # no second file was written


async def test_run_time_failure_in_the_first_node(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    """The recorded checkpoint failure, reproduced with fault injection (KernieGen's models never fail)."""
    server = await start_kg(inventory=Inventory(checkpoints=("gwref-dummy.safetensors",)),
                            faults=Faults(fail_next_prompts=1))
    await replay_straight_run(server, http, "06_ws_execution_error_checkpoint.json")


async def test_sockets_ids_feature_flags_and_broadcasts(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    transcript = load("06_ws_connect_and_broadcast.json")
    *early, late = transcript["ws_sessions"]  # the /api/ws socket was opened after the prompt ran
    sockets = [await connect(http, kerniegen.url, session) for session in early]
    replayer = Replayer(http, kerniegen.url)
    post = exchanges(transcript)[0]
    await replayer.replay(post)
    for ws, session in zip(sockets, early, strict=True):
        recorded = recorded_frames(session)
        assert_frames_like(recorded, await receive(ws, len(recorded)))
        await assert_silent(ws)
    await replayer.wait_for_history(replayer.ids[post["response"]["body"]["json"]["prompt_id"]])
    api_ws = await connect(http, kerniegen.url, late)
    frames = await receive(api_ws, 1)
    assert_frames_like(recorded_frames(late), frames)
    assert len(frames[0].data["data"]["sid"]) == 32  # generated, 32 hex digits
    for ws in [*sockets, api_ws]:
        await ws.close()


async def test_prompts_without_client_id_reach_every_socket(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(step_delay_ms=20)
    transcript = load("06_ws_prompt_without_client_id.json")
    sockets = [await connect(http, server.url, session) for session in transcript["ws_sessions"]]
    replayer = Replayer(http, server.url)
    first_post, slow_post, interrupt, history = exchanges(transcript)
    await replayer.replay(first_post)
    await replayer.wait_for_history(replayer.ids[first_post["response"]["body"]["json"]["prompt_id"]])
    slow = {**slow_post["request"], "body": {"json": {"prompt": slow_chain(color=4540, scales=12)}}}
    reply = await replayer.send(slow)
    replayer.ids[slow_post["response"]["body"]["json"]["prompt_id"]] = reply.json()["prompt_id"]
    received = []
    for ws in sockets:  # interrupt once the chain's second node runs, as the recorder did
        frames: list[Frame] = []
        while not (frames and frames[-1].name == "progress_state" and _running(frames[-1]) == "10"):
            frames += await receive(ws, 1)
        received.append(frames)
    await replayer.replay(interrupt)
    for ws, session, frames in zip(sockets, transcript["ws_sessions"], received, strict=True):
        frames += await receive_until(ws, "execution_interrupted")
        frames += await receive(ws, 1)  # the status that follows it
        recorded = recorded_frames(session)
        assert collapse_progress([frame.name for frame in frames]) == collapse_progress(
            [recorded_name(message) for message in recorded])
        recorded_interrupted = next(m for m in recorded if recorded_name(m) == "execution_interrupted")
        assert_frames_like([recorded_interrupted, recorded[-1]], frames[-2:])
        await assert_silent(ws)
    await replayer.wait_for_history(reply.json()["prompt_id"])
    await replayer.replay(history)
    for ws in sockets:
        await ws.close()


def _running(frame: Frame) -> str | None:
    running = [node for node, state in frame.data["data"]["nodes"].items() if state["state"] == "running"]
    return running[-1] if running else None


async def test_reconnect_with_the_same_client_id_mid_run(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=20)
    transcript = load("06_ws_reconnect_same_client_id.json")
    first_session, second_session = transcript["ws_sessions"]
    first = await connect(http, server.url, first_session)
    replayer = Replayer(http, server.url)
    post = exchanges(transcript)[0]
    body = {**post["request"]["body"]["json"], "prompt": slow_chain(scales=10)}
    request = {**post["request"], "body": {"json": body}}
    await replayer.send(request)
    seen = await receive_until(first, "executing", node="12")
    assert collapse_progress([frame.name for frame in seen]) == collapse_progress(
        [recorded_name(message) for message in recorded_frames(first_session)])
    await first.close()
    second = await connect(http, server.url, second_session)
    frames = await receive_until(second, "executing:null")
    recorded = recorded_frames(second_session)
    # status (with sid), then `executing` naming only the running node, then the rest of the run.
    assert [frame.name for frame in frames[:2]] == ["status", "executing"]
    assert set(frames[1].data["data"]) == {"node"}
    assert frames[0].data["data"]["status"]["exec_info"]["queue_remaining"] == 1
    assert collapse_progress([frame.name for frame in frames]) == collapse_progress(
        [recorded_name(message) for message in recorded])
    assert_frames_like(recorded[-5:], frames[-5:])
    await second.close()


async def test_busy_queue_delete_interrupt_and_clear(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=30)
    transcript = load("08_queue_busy_interrupt_delete.json")
    session = transcript["ws_sessions"][0]
    ws = await connect(http, server.url, session)
    replayer = Replayer(http, server.url)
    recorded = exchanges(transcript)
    for index, item in enumerate(recorded[:4]):  # S1..S4, small stand-ins for the recorded slow chains
        body = {**item["request"]["body"]["json"], "prompt": slow_chain(color=index, scales=14)}
        reply = await replayer.send({**item["request"], "body": {"json": body}})
        replayer.ids[item["response"]["body"]["json"]["prompt_id"]] = reply.json()["prompt_id"]
    frames = await receive_until(ws, "executing", node="10")
    for item in recorded[4:]:
        if item["label"].startswith("S2 running"):
            frames += await receive_until(ws, "execution_start")  # S1 gave way to S2
        if item["label"].startswith("idle again"):
            frames += await receive_until(ws, "executing:null", prompt_id=replayer.ids[transcript["prompt_ids"]["S2"]])
        await replayer.replay(item)
    await assert_silent(ws)
    ignore = ("status", "progress_state", "executing")
    ours = [frame.name for frame in frames if frame.name not in ignore]
    recorded_names = [recorded_name(message) for message in recorded_frames(session)]
    assert ours == [name for name in recorded_names if name not in ignore]
    statuses = [frame.data["data"]["status"]["exec_info"]["queue_remaining"]
                for frame in frames if frame.name == "status"]
    assert statuses[:2] == [0, 1] and statuses[-1] == 0
    await ws.close()
