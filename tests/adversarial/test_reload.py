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


def _replace(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    temp.replace(path)


def _registry_blocks(proxy: ProxyProcess, url: str, blocks: bool = True, timeout: float = 15) -> bool:
    """Whether, within `timeout`, the registry comes to block `url` (or, `blocks=False`, stops)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
        while time.monotonic() < deadline:
            if (c.get(url).headers.get("X-Optout-Reason") == "registry") == blocks:
                return True
            time.sleep(0.2)
    return False


def test_a_policy_that_adds_or_drops_a_registry_file_is_applied(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, registry=HOLDERS[:1])
    proxy = make_proxy(policy, optout_reload_interval=1)
    (tmp_path / "letters.yaml").write_text(registry_text(HOLDERS[1:2]))
    text = yaml.safe_load(policy.read_text())
    _replace(policy, yaml.safe_dump({**text, "registries": [*text["registries"], "letters.yaml"]}))
    assert _registry_blocks(proxy, "http://holder2.test/"), proxy.log()[-2000:]
    _replace(policy, yaml.safe_dump(text))  # the second file dropped again
    assert _registry_blocks(proxy, "http://holder2.test/", blocks=False)


def test_a_refused_new_registry_file_is_applied_once_it_is_fixed(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, registry=HOLDERS[:1])
    proxy = make_proxy(policy, optout_reload_interval=1)
    letters = tmp_path / "letters.yaml"
    letters.write_text("entries:\n  - holder: [unclosed\n")
    text = yaml.safe_load(policy.read_text())
    _replace(policy, yaml.safe_dump({**text, "registries": [*text["registries"], "letters.yaml"]}))
    assert proxy.wait_for_log("policy change refused", timeout=15)
    assert f"{letters}:" in proxy.log()  # file:line of what is wrong
    _replace(letters, registry_text(HOLDERS[1:2]))
    assert _registry_blocks(proxy, "http://holder2.test/"), proxy.log()[-2000:]


def test_a_configmap_style_symlink_swap_is_applied(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    """How the kubelet updates a mounted ConfigMap: every key is a symlink through `..data`, which
    is swapped to a new timestamped folder, and the old folder is removed."""
    mount = tmp_path / "mount"
    first = tmp_path / "first"
    write_policy(first, registry=HOLDERS[:1])
    mount.mkdir()
    (mount / "..2026_12_04_first").symlink_to(first)
    (mount / "..data").symlink_to("..2026_12_04_first")
    for name in ("policy.yaml", "policy-registry.yaml"):
        (mount / name).symlink_to(f"..data/{name}")
    text = yaml.safe_load((first / "policy.yaml").read_text())
    (first / "policy.yaml").write_text(
        yaml.safe_dump({**text, "audit": {"path": str(tmp_path / "audit.jsonl")}})
    )
    proxy = make_proxy(mount / "policy.yaml", optout_reload_interval=1)
    second = tmp_path / "second"
    second.mkdir()
    (second / "policy.yaml").write_text((first / "policy.yaml").read_text())
    (second / "policy-registry.yaml").write_text(registry_text(HOLDERS[:2]))
    (mount / "..2026_12_04_second").symlink_to(second)
    (mount / "..data_tmp").symlink_to("..2026_12_04_second")
    (mount / "..data_tmp").replace(mount / "..data")
    (mount / "..2026_12_04_first").unlink()
    for f in first.iterdir():
        f.unlink()
    first.rmdir()
    assert _registry_blocks(proxy, "http://holder2.test/"), proxy.log()[-2000:]


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    import os

    from proxy.enforcer import _signature

    registry = tmp_path / "r.yaml"
    registry.write_text("entries: [127.0.0.9]\n")
    before = _signature([registry])
    st = registry.stat()
    time.sleep(0.01)
    registry.write_text("entries: [127.0.0.1]\n")  # same size
    os.utime(registry, ns=(st.st_atime_ns, st.st_mtime_ns))  # `cp -p`, `touch -r`: the same mtime
    assert registry.stat().st_size == st.st_size and registry.stat().st_mtime_ns == st.st_mtime_ns
    assert _signature([registry]) != before
    assert _signature([registry, tmp_path / "a.yaml"]) == _signature([tmp_path / "a.yaml", registry])
