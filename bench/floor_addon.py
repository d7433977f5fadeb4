"""A do-nothing addon with the hooks ours has on every request, loaded the way ours is.

bench/throughput.py runs it beside bare mitmdump and ours: mitmproxy's own cost
of dispatching these hooks (a coroutine, a context manager and a dataclass
walk per addon and hook) is the floor under any addon's ratio.
"""

from mitmproxy import ctx, http


class Nothing:
    def request(self, flow: http.HTTPFlow) -> None:
        return None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        return None

    def response(self, flow: http.HTTPFlow) -> None:
        return None


class TopLevel:
    """Stands for our gate, which mitmproxy itself holds (proxy/gate.py)."""

    name = "floorgate"

    def request(self, flow: http.HTTPFlow) -> None:
        return None


if ctx.master.addons.get(TopLevel.name) is None:
    ctx.master.addons.add(TopLevel())
addons = [Nothing()]
