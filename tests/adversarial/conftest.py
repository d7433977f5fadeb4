"""Fixtures the adversarial tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.policies import write_policy
from tests.proxyproc import ProxyProcess


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One real proxy on the default test policy for a whole test module (its own audit log)."""
    tmp = tmp_path_factory.mktemp("proxy")
    p = ProxyProcess(write_policy(tmp), confdir=tmp / "conf", audit=tmp / "audit.jsonl")
    yield p
    p.stop()
