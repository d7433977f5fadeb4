"""A test-only addon: our Enforcer with a document loader that has a bug.

Loaded instead of proxy/addon.py to show that an exception inside our hook
blocks the request (internal-error) instead of letting mitmproxy forward it.
"""

from proxy.documents import OriginDocuments
from proxy.enforcer import Enforcer
from proxy.origin import Origin


class ExplodingEnforcer(Enforcer):
    async def documents(self, origin: Origin) -> OriginDocuments:
        raise ZeroDivisionError("simulated bug while loading documents")


addons = [ExplodingEnforcer()]
