"""What `mitmdump -s proxy/addon.py` loads. Install the package first (`pip install -e .`).

The gate is registered with mitmproxy directly, not as one of this script's
addons, so that it outlives a script whose options fail to apply (proxy.gate).
"""

import contextlib

from proxy import gate
from proxy.enforcer import Enforcer

enforcer = Enforcer()
with contextlib.suppress(AttributeError):  # imported outside a running mitmproxy (tests, tools)
    gate.install(enforcer)
addons = [enforcer]
