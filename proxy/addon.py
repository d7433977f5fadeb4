"""What `mitmdump -s proxy/addon.py` loads. Install the package first (`pip install -e .`)."""

from proxy.enforcer import Enforcer

addons = [Enforcer()]
