"""`python -m proxy` is the `optout-proxy` command."""

from proxy.cli import entrypoint

entrypoint()
