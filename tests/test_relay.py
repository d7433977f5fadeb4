"""The supervisor's relay of a worker's output: whole lines, tagged, bounded, and patient with a
full non-blocking output."""

from __future__ import annotations

import fcntl
import os
import select
import threading
import time

from proxy.workers import RELAY_LINE_MAX, relay_lines


def test_lines_arrive_whole_and_tagged_and_an_endless_line_in_bounded_pieces() -> None:
    out_r, out_w = os.pipe()
    flags = fcntl.fcntl(out_w, fcntl.F_GETFL)
    fcntl.fcntl(out_w, fcntl.F_SETFL, flags | os.O_NONBLOCK)  # fills at once: the relay must wait
    src_r, src_w = os.pipe()
    relay = threading.Thread(target=relay_lines, args=(os.fdopen(src_r, "rb"), out_w, b"[w1] "))
    relay.start()
    long_line, endless = b"x" * 50_000 + b"\n", b"y" * (RELAY_LINE_MAX + 5_000)  # no newline at all

    def feed() -> None:
        for chunk in (long_line, b"short\n", endless):
            os.write(src_w, chunk)
        os.close(src_w)

    threading.Thread(target=feed).start()
    time.sleep(0.2)  # the output is full meanwhile
    got, deadline = b"", time.monotonic() + 10
    while got.count(b"\n") < 4 and time.monotonic() < deadline:
        if select.select([out_r], [], [], 0.5)[0]:
            got += os.read(out_r, 65536)
    relay.join(5)
    lines = got.split(b"\n")[:4]
    assert lines[0] == b"[w1] " + long_line[:-1]  # nothing dropped while the output was full
    assert lines[1] == b"[w1] short"
    assert lines[2] == b"[w1] " + b"y" * RELAY_LINE_MAX  # a piece of the endless line, tagged
    assert lines[3] == b"[w1] " + b"y" * 5_000
    assert not relay.is_alive()
