"""Per-origin slots in one process (politeness.max_concurrency): a limit, first come first served,
a bounded wait, and no slot lost to a waiter that gave up or was cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from proxy.slots import Lease, Slots, release_soon


def test_waiters_get_freed_slots_in_arrival_order_and_give_up_after_max_wait() -> None:
    async def scenario() -> tuple[list[int], Lease | None, int]:
        slots = Slots()
        first = await slots.acquire("o", 1, 0)
        assert first is not None
        order: list[int] = []

        async def wait(i: int) -> None:
            lease = await slots.acquire("o", 1, 5)
            assert lease is not None
            order.append(i)
            await asyncio.sleep(0.01)
            slots.release(lease)

        waiters = [asyncio.create_task(wait(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        slots.release(first)
        await asyncio.gather(*waiters)
        held = await slots.acquire("o", 1, 0)
        late = await slots.acquire("o", 1, 0.1)  # the one slot is held: gives up after 0.1 s
        return order, late, slots.in_use("o") if held else -1

    order, late, in_use = asyncio.run(scenario())
    assert order == [0, 1, 2, 3, 4]
    assert late is None and in_use == 1


def test_a_cancelled_waiter_loses_no_slot_and_release_twice_is_harmless() -> None:
    async def scenario() -> tuple[int, bool]:
        slots = Slots()
        first = await slots.acquire("o", 1, 0)
        assert first is not None
        waiter = asyncio.create_task(slots.acquire("o", 1, 5))
        await asyncio.sleep(0.01)
        slots.release(first)  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs: the slot must come back
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        slots.release(first)
        again = await slots.acquire("o", 1, 0)
        return slots.in_use("o"), again is not None

    in_use, again = asyncio.run(scenario())
    assert again and in_use == 1


def test_a_reload_that_lowers_the_limit_holds_while_a_queue_lasts() -> None:
    async def scenario() -> int:
        slots = Slots()
        held = [await slots.acquire("o", 2, 0), await slots.acquire("o", 2, 0)]
        waiters = [asyncio.create_task(slots.acquire("o", 1, 5)) for _ in range(3)]  # the policy now says 1
        await asyncio.sleep(0)
        most = 0
        for _ in range(3):
            lease = held.pop(0)
            assert lease is not None
            slots.release(lease)
            await asyncio.sleep(0)
            held += [w.result() for w in waiters if w.done() and w.result() not in held]
            most = max(most, slots.in_use("o"))
        return most

    assert asyncio.run(scenario()) == 1


def test_a_reload_that_raises_the_limit_serves_at_once() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        slots = Slots()
        await slots.acquire("o", 1, 0)
        waiting = asyncio.create_task(slots.acquire("o", 1, 1.0))
        await asyncio.sleep(0)
        newcomer = await slots.acquire("o", 3, 1.0)  # the policy now says 3: two are free
        await asyncio.sleep(0)
        return waiting.done() and waiting.result() is not None, newcomer is not None, slots.in_use("o")

    assert asyncio.run(scenario()) == (True, True, 3)


def test_a_release_from_another_thread_wakes_the_waiter_at_once() -> None:
    """A flow state's finalizer may run in whatever thread collects it."""

    async def scenario() -> float:
        slots = Slots()
        first = await slots.acquire("o", 1, 0)
        assert first is not None
        waiting = asyncio.create_task(slots.acquire("o", 1, 3.0))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        threading.Thread(target=release_soon, args=(loop, slots.release, first)).start()
        assert await waiting is not None
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5
