"""Issue 8, safe hot reload: a file caught mid-write is never loaded; a shrinking registry is said loudly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from tests.policies import entry, write_policy
from tests.proxyproc import ProxyProcess

HOLDERS = [entry(f"Holder {i}", f"holder{i}.test") for i in range(1, 6)]


def registry_text(entries: list[dict[str, object]]) -> str:
    return yaml.safe_dump({"entries": entries}, sort_keys=False)


def test_a_registry_written_slowly_in_place_is_never_half_loaded(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, registry=HOLDERS[:4])
    registry = tmp_path / "policy-registry.yaml"
    proxy = make_proxy(policy, optout_reload_interval=1)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def crawl() -> None:
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
            while not stop.is_set():
                r = c.get("http://www.holder4.test/works/")
                seen.append((r.status_code, r.headers.get("X-Optout-Reason", "")))
                time.sleep(0.05)

    crawler = threading.Thread(target=crawl)
    crawler.start()
    try:
        text = registry_text(HOLDERS)  # all five: holder4 stays, holder5 is new
        # Cut at entry boundaries: every state of the file on disk is valid YAML with fewer entries.
        pieces = text.replace("\n- holder:", "\n\0- holder:").split("\0")
        with open(registry, "w") as f:  # rewritten in place, not replaced atomically
            for piece in pieces:
                f.write(piece)
                f.flush()
                time.sleep(0.4)  # a slow writer
        deadline = time.monotonic() + 15
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
            while time.monotonic() < deadline:
                if c.get("http://holder5.test/").status_code == 451:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the finished registry was never loaded")
    finally:
        stop.set()
        crawler.join()
    assert len(seen) > 20
    assert set(seen) == {(451, "registry")}, [s for s in seen if s != (451, "registry")][:5]


def test_a_reload_that_drops_most_of_a_registry_is_logged_with_the_counts(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, registry=HOLDERS)
    proxy = make_proxy(policy, optout_reload_interval=1)
    registry = tmp_path / "policy-registry.yaml"
    temp = registry.with_suffix(".tmp")
    temp.write_text(registry_text(HOLDERS[:1]))
    temp.replace(registry)
    assert proxy.wait_for_log("RELOAD SHRINKS THE REGISTRY", timeout=15)
    assert "drops from 5 to 1 entries" in proxy.log()
