"""Scaling probes in a real kernel through the server routes (pytest-jupyter)."""
from __future__ import annotations

import asyncio
import json

import pytest
import tornado.httpclient

pytestmark = pytest.mark.slow

DEFS = '''
import torch
def linear_harness(T):
    x = torch.ones(T, 256)
    return (x * 2).sum()

def slow_harness(T):
    import time
    time.sleep(3)
    return torch.ones(T).sum()

def masked_harness(T, device="cpu"):
    x = torch.randn(4, T, device=device, requires_grad=True)
    mask = torch.zeros(4, T)
    mask[:, : T // 2] = 1
    return (x * mask).sum()

def broken(T):
    x = torch.ones(T)
    return x.view(3, -1, 7, 11)
'''


async def call(jp_fetch, method, *parts, body=None):
    kw = {"method": method}
    if body is not None:
        kw["body"] = json.dumps(body)
    resp = await jp_fetch("torchreview-lab", *parts, **kw)
    return json.loads(resp.body)


async def call_error(jp_fetch, method, *parts, body=None):
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await call(jp_fetch, method, *parts, body=body)
    return info.value.code, json.loads(info.value.response.body)


class Kernel:
    """A real kernel with DEFS executed in it (async context manager; the tornasync plugin that
    pytest-jupyter vendors runs async tests but not async fixtures)."""

    def __init__(self, serverapp):
        self.app = serverapp

    async def __aenter__(self):
        km = self.app.kernel_manager
        self.kid = await km.start_kernel()
        self.client = km.get_kernel(self.kid).client()
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=60)
        reply = await self.client.execute_interactive(DEFS, timeout=60)
        assert reply["content"]["status"] == "ok"
        return self.kid, self.client

    async def __aexit__(self, *exc):
        self.client.stop_channels()
        probes = self.app.web_app.settings.get("torchreview_probes")
        if probes is not None:
            await probes.close()
        await self.app.kernel_manager.shutdown_kernel(self.kid, now=True)


@pytest.fixture
def kernel(jp_serverapp):
    return Kernel(jp_serverapp)


async def wait_done(jp_fetch, pid, timeout=90):
    for _ in range(int(timeout / 0.25)):
        data = await call(jp_fetch, "GET", "probes", pid)
        if data["state"] != "running":
            return data
        await asyncio.sleep(0.25)
    raise AssertionError("probe did not finish")


async def user_names(client):
    out = []
    await client.execute_interactive(
        "print(sorted(globals()))", timeout=30, store_history=False,
        output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    return "".join(out).strip()


async def test_probe_linear_function_end_to_end(jp_fetch, kernel):
    async with kernel as (kid, client):
        names_before = await user_names(client)
        fns = await call(jp_fetch, "POST", "functions", body={"kernel_id": kid})
        names = [f["name"] for f in fns["functions"]]
        assert "linear_harness" in names and names[0].endswith("harness")
        cells = [{"cell_type": "code", "source": DEFS, "id": "defs"}]
        started = await call(jp_fetch, "POST", "probes", body={
            "kernel_id": kid, "function": "linear_harness", "sizes": [256, 512, 1024, 2048], "target": 400_000,
            "device": "cpu", "cells": cells, "path": "demo.ipynb"})
        assert started["state"] == "running" and started["id"]
        done = await wait_done(jp_fetch, started["id"])
        assert done["state"] == "done", done["error"]
        res = done["result"]
        assert [p["size"] for p in res["points"]] == [256, 512, 1024, 2048]
        assert abs(res["memory_fit"]["exponent"] - 1.0) < 0.1
        assert res["target"]["size"] == 400_000
        assert len(done["points"]) == 4
        # the probe left no names behind in the user's namespace
        assert await user_names(client) == names_before


async def test_harness_error_maps_to_cell_and_line(jp_fetch, kernel):
    async with kernel as (kid, _):
        cells = [{"cell_type": "markdown", "source": "# title"}, {"cell_type": "code", "source": DEFS, "id": "defs"}]
        started = await call(jp_fetch, "POST", "probes", body={
            "kernel_id": kid, "function": "broken", "sizes": [100, 200], "device": "cpu", "cells": cells})
        done = await wait_done(jp_fetch, started["id"])
        # the harness raising is a result (skipped sizes), not a crash; the kernel survives
        res = done["result"]
        assert res is not None and not res["points"]
        assert any("RuntimeError" in s["reason"] or "shape" in s["reason"] for s in res["skipped"])
        # the error names the notebook cell and the line in it that raised
        assert done["state"] == "error"
        err = done["error"]
        assert err.get("cell") == 1, err
        assert DEFS.splitlines()[err["line"] - 1].strip() == "return x.view(3, -1, 7, 11)"
        assert "RuntimeError" in err["message"]
        again = await call(jp_fetch, "POST", "functions", body={"kernel_id": kid})
        assert again["functions"]


async def test_cancel_long_probe_keeps_kernel(jp_fetch, kernel):
    async with kernel as (kid, _):
        started = await call(jp_fetch, "POST", "probes", body={
            "kernel_id": kid, "function": "slow_harness", "sizes": [10, 20, 40, 80], "device": "cpu"})
        await asyncio.sleep(1.0)
        code, body = await call_error(jp_fetch, "POST", "probes", body={"kernel_id": kid, "function": "linear_harness"})
        assert code == 409 and "already running" in body["message"]
        cancelled = await call(jp_fetch, "DELETE", "probes", started["id"])
        assert cancelled["state"] in ("cancelled", "error"), cancelled
        fns = await call(jp_fetch, "POST", "functions", body={"kernel_id": kid})
        assert any(f["name"] == "slow_harness" for f in fns["functions"])


async def test_missing_kernel_and_bad_requests(jp_fetch):
    code, body = await call_error(jp_fetch, "POST", "functions", body={"kernel_id": "nope"})
    assert code == 404 and "nope" in body["message"]
    code, body = await call_error(jp_fetch, "POST", "functions", body={"path": "none.ipynb"})
    assert code == 404 and "none.ipynb" in body["message"]
    code, body = await call_error(jp_fetch, "POST", "probes", body={"kernel_id": "x", "function": "f", "sizes": [0]})
    assert code == 400 and "sizes" in body["message"]
    code, body = await call_error(jp_fetch, "POST", "probes", body={"kernel_id": "x", "function": "1bad"})
    assert code == 400 and "function" in body["message"]
    code, body = await call_error(jp_fetch, "GET", "probes", "abc123")
    assert code == 404


async def test_busy_kernel_is_409(jp_fetch, jp_serverapp, kernel):
    async with kernel as (kid, client):
        client.execute("import time; time.sleep(4)")
        for _ in range(40):
            if jp_serverapp.kernel_manager.get_kernel(kid).execution_state == "busy":
                break
            await asyncio.sleep(0.1)
        code, body = await call_error(jp_fetch, "POST", "probes", body={"kernel_id": kid, "function": "linear_harness"})
        assert code == 409 and "busy" in body["message"]


async def test_isolated_probe_runs_definitions_only(jp_fetch, jp_serverapp):
    km = jp_serverapp.kernel_manager
    before = set(km.list_kernel_ids())
    cells = [{"cell_type": "markdown", "source": "# demo"},
             {"cell_type": "code", "source": "%matplotlib inline\nimport torch\nW = 256"},
             {"cell_type": "code", "source": "def harness(T):\n    return torch.ones(T, W).sum()\n"},
             {"cell_type": "code", "source": "raise SystemExit('a training cell must not run in isolated mode')"}]
    started = await call(jp_fetch, "POST", "probes", body={
        "isolated": True, "cells": cells, "function": "harness", "sizes": [128, 256, 512], "device": "cpu"})
    assert started["isolated"] and started["kernel_id"] not in before
    done = await wait_done(jp_fetch, started["id"])
    assert done["state"] == "done", done["error"]
    assert [p["size"] for p in done["result"]["points"]] == [128, 256, 512]
    for _ in range(40):  # the scratch kernel is shut down afterwards
        if set(km.list_kernel_ids()) == before:
            break
        await asyncio.sleep(0.25)
    assert set(km.list_kernel_ids()) == before
    code, body = await call_error(jp_fetch, "POST", "probes", body={"isolated": True, "function": "harness"})
    assert code == 400 and "cells" in body["message"]


async def test_probe_with_runtime_checks_maps_findings_to_cells(jp_fetch, kernel):
    async with kernel as (kid, _):
        cells = [{"cell_type": "markdown", "source": "# t"}, {"cell_type": "code", "source": DEFS, "id": "defs"}]
        started = await call(jp_fetch, "POST", "probes", body={
            "kernel_id": kid, "function": "masked_harness", "sizes": [64, 128, 256], "device": "cpu",
            "checks": True, "cells": cells, "path": "nb.ipynb"})
        done = await wait_done(jp_fetch, started["id"])
        assert done["state"] == "done", done["error"]
        device = [f for f in done["findings"] if f["rule"] == "TR010"]
        assert device, (done["findings"], done["notes"])
        f = device[0]
        assert f["cell"] == 1 and f["path"] == "nb.ipynb" and f["cell_id"] == "defs"
        assert DEFS.splitlines()[f["line"] - 1].strip() == "mask = torch.zeros(4, T)"


async def test_probe_result_has_the_verdict_and_budget_fraction_sets_the_budget(jp_fetch, kernel):
    async with kernel as (kid, _client):
        probe = await call(jp_fetch, "POST", "probes", body={
            "kernel_id": kid, "function": "linear_harness", "sizes": [64, 128, 256], "target": 100_000,
            "device": "cpu", "budget_fraction": 0.25, "time_budget": 30})
        assert probe["spec"]["budget_fraction"] == 0.25 and "budget_bytes" not in probe["spec"]
        done = await wait_done(jp_fetch, probe["id"])
        assert done["state"] == "done", done
        result = done["result"]
        assert result["verdict"].startswith("O(T^1.00) memory:") and "T=100,000" in result["verdict"]
        free = result["target"]["device_free_bytes"]
        assert free and abs(result["budget_bytes"] - free * 0.25) < 0.1 * free  # a quarter of free memory
        code, err = await call_error(jp_fetch, "POST", "probes", body={
            "kernel_id": kid, "function": "linear_harness", "budget_fraction": 2})
        assert code == 400 and "budget_fraction" in err["message"]
