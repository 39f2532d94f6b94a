"""The bounded send queue of a client socket (datapath/aio/fanin.py): what goes first when it is full."""

from __future__ import annotations

from gateway.datapath.aio.fanin import Outgoing, SendQueue


def no_sender() -> None:
    """These tests take from the queue themselves."""


def filled(*kinds: str, limit: int, max_bytes: int = 1 << 20) -> tuple[SendQueue, list[str]]:
    dropped: list[str] = []
    queue = SendQueue(limit, max_bytes, dropped.append, no_sender)
    for kind in kinds:
        essential = kind == "executed" or kind.startswith("execution_")
        queue.put(Outgoing(kind, kind.encode() if kind == "binary" else kind, "kerniegen", essential))
    return queue, dropped


def drained(queue: SendQueue) -> list[str]:
    return [item.kind for item in queue.take(1 << 30)]


def take_one(queue: SendQueue) -> Outgoing:
    (item,) = queue.take(1)  # the first passes a budget of one byte, and nothing after it is taken
    return item


async def test_below_its_bound_nothing_is_dropped_and_order_is_kept() -> None:
    queue, dropped = filled("status", "binary", "progress", "executed", limit=8)
    assert dropped == []
    assert drained(queue) == ["status", "binary", "progress", "executed"]


async def test_full_it_drops_a_new_preview_or_progress() -> None:
    queue, dropped = filled("status", "executing", "binary", "progress", limit=2)
    assert dropped == ["binary", "progress"]
    assert drained(queue) == ["status", "executing"]


async def test_full_it_drops_queued_previews_first_then_other_messages_for_essential_ones() -> None:
    queue, dropped = filled("binary", "status", "progress", "execution_start", "executed", "execution_success",
                            limit=3)
    assert dropped == ["binary", "progress", "status"]
    assert drained(queue) == ["execution_start", "executed", "execution_success"]


async def test_an_essential_message_always_gets_in() -> None:
    queue, dropped = filled("execution_start", "executed", "execution_success", "executing", limit=2)
    assert dropped == ["executing"]
    assert drained(queue) == ["execution_start", "executed", "execution_success"]


async def test_its_bytes_are_bounded_too_and_one_big_message_alone_passes() -> None:
    dropped: list[str] = []
    queue = SendQueue(100, 1000, dropped.append, no_sender)
    queue.put(Outgoing("binary", b"a" * 5000, "kerniegen"))  # alone: larger than the bound, still queued
    queue.put(Outgoing("binary", b"b" * 10, "kerniegen"))
    assert dropped == ["binary"] and queue.size == 5000
    assert take_one(queue).kind == "binary" and queue.size == 0
    for _ in range(3):
        queue.put(Outgoing("binary", b"c" * 400, "kerniegen"))
    queue.put(Outgoing("executed", "e" * 300, "kerniegen", essential=True))
    assert dropped == ["binary", "binary", "binary"] and queue.size == 700
    assert drained(queue) == ["binary", "executed"]


async def test_a_full_queue_waits_for_a_reading_client_instead_of_dropping() -> None:
    import asyncio

    queue, dropped = filled("progress", "progress", limit=2)
    assert queue.full()
    waiting = asyncio.create_task(queue.room(5.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    take_one(queue)  # the client read one: there is room again
    await asyncio.wait_for(waiting, 1.0)
    queue.put(Outgoing("progress", "progress", "kerniegen"))
    assert dropped == []


async def test_a_client_that_lets_the_wait_run_out_is_not_waited_for_again_until_it_catches_up() -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    queue, dropped = filled(*["progress"] * 4, limit=4)
    await queue.room(0.05)  # nobody reads: the wait runs out
    started = loop.time()
    await queue.room(5.0)  # lagging: no second wait
    assert loop.time() - started < 0.5
    queue.put(Outgoing("progress", "progress", "kerniegen"))
    assert dropped == ["progress"]
    for _ in range(3):  # it sends half its queue and more: caught up
        take_one(queue)
    queue.put(Outgoing("progress", "progress", "kerniegen"))
    queue.put(Outgoing("progress", "progress", "kerniegen"))
    queue.put(Outgoing("progress", "progress", "kerniegen"))
    assert queue.full()
    waiting = asyncio.create_task(queue.room(5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # it is waited for again
    take_one(queue)
    await asyncio.wait_for(waiting, 1.0)


async def test_held_messages_go_in_whole_past_the_count_but_not_past_the_bytes() -> None:
    dropped: list[str] = []
    queue = SendQueue(2, 1000, dropped.append, no_sender)
    queue.put_held([Outgoing("progress", "p" * 100, "kerniegen") for _ in range(5)])
    assert len(queue) == 5 and dropped == []
    queue.put_held([Outgoing("binary", b"b" * 400, "kerniegen") for _ in range(2)])
    assert dropped == ["binary"] and queue.size == 900  # the second would pass 1000 bytes


async def test_take_gives_what_is_queued_in_order_up_to_its_budget() -> None:
    queue = SendQueue(16, 1 << 20, lambda kind: None, no_sender)
    for index in range(5):
        queue.put(Outgoing("progress", str(index) * 100, "kerniegen"))
    assert queue.take(0) == [] and len(queue) == 5
    first = queue.take(150)  # the second passes the budget; nothing after it is taken
    assert [item.data[0] for item in first] == ["0", "1"] and queue.size == 300
    rest = queue.take(1 << 20)
    assert [item.data[0] for item in rest] == ["2", "3", "4"] and queue.size == 0 and len(queue) == 0
    assert queue.take(1 << 20) == []


async def test_a_take_that_makes_room_ends_the_wait_for_it() -> None:
    import asyncio

    queue, dropped = filled(*["progress"] * 4, limit=4)
    waiting = asyncio.create_task(queue.room(5.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert len(queue.take(1 << 20)) == 4
    await asyncio.wait_for(waiting, 1.0)
    assert dropped == []


def test_a_sender_is_started_only_when_something_is_to_be_sent_and_none_runs() -> None:
    started: list[None] = []
    queue = SendQueue(16, 1 << 20, lambda kind: None, lambda: started.append(None))
    assert started == []  # idle: no sender
    for _ in range(3):
        queue.put(Outgoing("status", "status", "kerniegen"))
    assert len(started) == 1  # the one started takes all three
    assert len(queue.take(1 << 20)) == 3
    assert queue.sender_done()  # empty: it stops
    queue.put_held([Outgoing("progress", "p", "kerniegen")])
    assert len(started) == 2  # the next message starts another
    queue.take(1 << 20)
    assert queue.sender_done()
    queue.close_with(1001)
    assert len(started) == 3  # the close needs a sender too, with nothing queued
    assert not queue.sender_done()  # which closes the socket rather than stop
    queue.put(Outgoing("status", "status", "kerniegen"))
    assert len(started) == 3
