"""The addon inside mitmproxy's test harness: configure, reloads, hooks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.io import FlowWriter
from mitmproxy.test import taddons, tflow

from proxy.enforcer import Enforcer
from proxy.policy import load_policy
from tests.policies import entry, write_policy


def test_broken_policy_at_runtime_keeps_the_last_good(tmp_path: Path) -> None:
    good = write_policy(tmp_path)
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(good))
        assert enforcer.policy is not None
        digest = enforcer.policy.digest
        broken = tmp_path / "broken.yaml"
        broken.write_text("agent: ExampleBot\nsignals:\n  - robots\nuser_agnet: x\n")
        with pytest.raises(exceptions.OptionsError, match=r"broken\.yaml:3"):
            tctx.configure(enforcer, optout_policy=str(broken))
        assert enforcer.policy.digest == digest
        assert tctx.options.optout_policy == str(good)  # mitmproxy rolled the option back


def test_a_valid_change_replaces_the_policy_whole(tmp_path: Path) -> None:
    first = write_policy(tmp_path / "a")
    second = write_policy(tmp_path / "b", registry=[entry("H", "h.example")], agent="OtherBot")
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(first))
        tctx.configure(enforcer, optout_policy=str(second))
        assert enforcer.policy is not None
        assert enforcer.policy.agent == "OtherBot"
        assert enforcer.policy.digest == load_policy(second).digest


async def test_registry_block_in_the_request_hook(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, registry=[entry("H", "h.example")])
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(policy), optout_audit=str(tmp_path / "a.jsonl"))
        flow = tflow.tflow()
        flow.request.host = "www.H.example"
        flow.request.headers["Host"] = "www.h.example"
        if (pending := enforcer.request(flow)) is not None:
            await pending
        assert flow.response is not None and flow.response.status_code == 451
        assert flow.response.headers["X-Optout-Reason"] == "registry"
        summary = flow.metadata["optout"]
        assert (summary["decision"], summary["signal"], summary["enforced"]) == ("block", "registry", True)
        assert (tmp_path / "a.jsonl").read_text().count("\n") == 1
        # mitmproxy can still save the flow: what we leave in metadata is serialisable
        buffer = io.BytesIO()
        FlowWriter(buffer).add(flow)
        assert buffer.getvalue()


async def test_request_without_a_policy_is_not_forwarded(tmp_path: Path) -> None:
    enforcer = Enforcer()
    with taddons.context(enforcer):
        flow = tflow.tflow()
        if (pending := enforcer.request(flow)) is not None:
            await pending
        # No policy and no audit log: nothing may pass, and nothing unrecorded does.
        assert flow.response is not None and flow.response.status_code == 503


def test_options_are_checked(tmp_path: Path) -> None:
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(write_policy(tmp_path)))
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(enforcer, optout_mode="observe")
        with pytest.raises(exceptions.OptionsError, match="optout_cache_size"):
            tctx.configure(enforcer, optout_cache_size=0)
        tctx.configure(enforcer, optout_cache_size=5)
        assert enforcer.cache.max_size == 5


def test_audit_options_apply_at_runtime(tmp_path: Path) -> None:
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(write_policy(tmp_path)))
        tctx.configure(enforcer, optout_audit_max_bytes=1234, optout_audit_checkpoint_every=7)
        assert enforcer.audit is not None
        assert (enforcer.audit.max_bytes, enforcer.audit.checkpoint_every) == (1234, 7)
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(enforcer, optout_audit_checkpoint_every=0)


def test_policy_documents_are_fetched_as_the_current_agent(tmp_path: Path) -> None:
    enforcer = Enforcer()
    with taddons.context(enforcer) as tctx:
        tctx.configure(enforcer, optout_policy=str(write_policy(tmp_path / "a")))
        assert enforcer.client().headers["User-Agent"].startswith("ExampleBot (optout-proxy/")
        tctx.configure(enforcer, optout_policy=str(write_policy(tmp_path / "b", agent="OtherBot")))
        assert enforcer.client().headers["User-Agent"].startswith("OtherBot (optout-proxy/")
