"""The gate: with `mitmdump -s proxy/addon.py`, no request is forwarded unless the enforcer is running.

mitmproxy loads a script in a background task and, when the script's options
do not parse or its `configure` raises, logs (or not even that) and carries on
without it: every request would be forwarded unjudged (mitmproxy-edges.md,
"Script loading"). The gate is registered with mitmproxy itself while the
script is imported, so it outlives a script that failed to load. Until the
enforcer says it is ready, the gate answers every request and CONNECT with
503 and kills raw flows; and once the script's load has finished without the
enforcer ready, it stops the process with a non-zero exit status.

`optout-proxy run` does not need it (the enforcer is built in, so mitmproxy
itself refuses to start on a bad option), but it is harmless there.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import os
import sys
from typing import Protocol

from mitmproxy import ctx, exceptions, http, tcp, udp

logger = logging.getLogger(__name__)

NAME = "optoutgate"
NOT_READY_STATUS = 503
# Exit status when the script could not be configured (mitmdump's own for startup errors).
EXIT_NOT_CONFIGURED = 1


class Ready(Protocol):
    ready: bool


class Gate:
    """Refuses every flow while `enforcer.ready` is false."""

    name = NAME

    def __init__(self, enforcer: Ready) -> None:
        self.enforcer = enforcer

    def _closed(self) -> bool:
        return not self.enforcer.ready

    def _refuse(self, flow: http.HTTPFlow) -> None:
        flow.response = http.Response.make(
            NOT_READY_STATUS,
            b"" if flow.request.method == "HEAD" else
            b"503: optout-proxy is not configured (see its log); nothing is forwarded.\n",
            {"Content-Type": "text/plain; charset=utf-8", "X-Optout-Reason": "not-configured"},
        )  # fmt: skip

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self._closed() and flow.response is None:
            self._refuse(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if self._closed() and flow.response is None:
            self._refuse(flow)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if self._closed():
            flow.kill()

    def udp_start(self, flow: udp.UDPFlow) -> None:
        if self._closed():
            flow.kill()


def install(enforcer: Ready) -> Gate:
    """Register the gate with the running mitmproxy (once), watching `enforcer`.

    Call while the script is imported. The check runs right after the current
    load step: script loading is synchronous from import to `configure`, so
    by then the enforcer has been configured or has failed.
    """
    gate: Gate | None = ctx.master.addons.get(NAME)
    if gate is None:
        gate = Gate(enforcer)
        ctx.master.addons.add(gate)
    else:
        gate.enforcer = enforcer  # the script was reloaded
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return gate
    loop.call_soon(_exit_unless_ready, enforcer)
    return gate


def _exit_unless_ready(enforcer: Ready) -> None:
    if enforcer.ready and not ctx.options.deferred:
        return
    enforcer.ready = False
    problems = deferred_problems()
    message = (
        f"optout-proxy: {'; '.join(problems)}; refusing to run on settings other than those asked for"
        if problems else
        "optout-proxy: the addon could not be configured (a bad --set optout_* value, or a policy or "
        "audit problem logged above); refusing to run a proxy that would forward unjudged traffic"
    )  # fmt: skip
    logger.error(message)
    print(message, file=sys.stderr, flush=True)
    # mitmproxy keeps running after a failed script load; nothing short of
    # ending the process stops it from serving (the gate covers the meantime).
    os._exit(EXIT_NOT_CONFIGURED)


def deferred_problems() -> list[str]:
    """What is wrong with the --set values mitmproxy could not apply, one sentence each.

    mitmproxy keeps a `--set` for an option no addon has declared yet, and
    applies them all at once when one is declared: a single value that does
    not parse leaves every one of them unapplied, and the names alone would
    read as misspellings. Each is looked at on its own here.
    """
    options = ctx.options
    known = getattr(options, "_options", {})  # mitmproxy 11.0's registry of declared options
    invalid, unknown, held = [], [], []
    for name, value in sorted(options.deferred.items()):
        shown = " ".join(getattr(value, "val", [str(value)]))
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            unknown.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        try:
            if hasattr(value, "val"):
                options._parse_setval(known[name], value.val)
        except exceptions.OptionsError as e:
            invalid.append(f"--set {name}={shown}: {e}")
        else:
            held.append(name)
    out = [*invalid]
    if unknown:
        out.append(f"unknown option(s) {', '.join(unknown)}")
    if held and out:
        out.append(f"so {', '.join(held)} {'was' if len(held) == 1 else 'were'} not applied either")
    elif held:
        out.append(f"{', '.join(held)} could not be applied")
    return out
