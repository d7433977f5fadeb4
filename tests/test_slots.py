"""Per-origin slots in one process (politeness.max_concurrency): a limit, first come first served,
a bounded wait, and no slot lost to a waiter that gave up or was cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from proxy.slots import Lease, Slots


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
