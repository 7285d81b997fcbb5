"""The server extension's HTTP routes, through a real Jupyter server (pytest-jupyter)."""
from __future__ import annotations

import json

import pytest
import tornado.httpclient

from conftest import write_notebook
from torchreview_lab.findings import CATEGORIES, SEVERITIES

BUG = "import torch\ndef f(x):\n    m = torch.zeros(x.shape[0], 4)\n    return x * m\n"
CELLS = [("markdown", "# A notebook\nwith a bug below"), ("code", "x = 1"), ("code", BUG)]


async def post(jp_fetch, body, **kw):
    return await jp_fetch(
        "torchreview-lab", "review", method="POST",
        body=body if isinstance(body, (str, bytes)) else json.dumps(body), **kw,
    )


async def post_error(jp_fetch, body, **kw):
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await post(jp_fetch, body, **kw)
    resp = info.value.response
    return info.value.code, (json.loads(resp.body) if resp is not None and resp.body else {})


def device_findings(data):
    """Findings at the ``torch.zeros`` line of the bug cell (cell 2, line 3)."""
    return [f for f in data["findings"] if f["cell"] == 2 and f["line"] == 3 and f["category"] == "device-handling"]


def check_review_shape(data, path):
    assert set(data) >= {"findings", "summary"}
    assert data["summary"]["total"] == len(data["findings"])
    for f in data["findings"]:
        assert f["path"] == path
        assert f["severity"] in SEVERITIES and f["category"] in CATEGORIES
        assert f["rule"].startswith("TR") and f["title"] and f["problem"]


async def test_review_by_path(jp_fetch, jp_root_dir):
    (jp_root_dir / "sub").mkdir()
    write_notebook(jp_root_dir / "sub" / "bug.ipynb", CELLS)
    resp = await post(jp_fetch, {"path": "sub/bug.ipynb", "standard": "research"})
    assert resp.code == 200
    data = json.loads(resp.body)
    check_review_shape(data, "sub/bug.ipynb")
    hits = device_findings(data)
    assert hits, data["findings"]
    hit = hits[0]
    assert hit["cell_id"] == "cell-2"
    assert hit["column"] >= 5 and "device" in (hit["problem"] + hit["title"]).lower()
    assert data["summary"]["standard"] == "research"


async def test_review_live_cells_uses_unsaved_content(jp_fetch, jp_root_dir):
    # The saved file is clean; the editor content (sent as cells) has the bug.
    write_notebook(jp_root_dir / "live.ipynb", [("code", "x = 1")])
    cells = [
        {"cell_type": "markdown", "source": "# title", "id": "m0"},
        {"cell_type": "code", "source": BUG.splitlines(keepends=True), "id": "c1", "execution_count": 7},
    ]
    data = json.loads((await post(jp_fetch, {"cells": cells, "path": "live.ipynb", "standard": "research"})).body)
    check_review_shape(data, "live.ipynb")
    hits = [f for f in data["findings"] if f["cell"] == 1 and f["line"] == 3 and f["category"] == "device-handling"]
    assert hits and hits[0]["cell_id"] == "c1" and hits[0]["execution_count"] == 7
    saved = json.loads((await post(jp_fetch, {"path": "live.ipynb"})).body)
    assert not [f for f in saved["findings"] if f["category"] == "device-handling"]


async def test_production_reports_at_least_research(jp_fetch, jp_root_dir):
    write_notebook(jp_root_dir / "bug.ipynb", CELLS)
    research = json.loads((await post(jp_fetch, {"path": "bug.ipynb", "standard": "research"})).body)
    production = json.loads((await post(jp_fetch, {"path": "bug.ipynb", "standard": "production"})).body)
    assert production["summary"]["standard"] == "production"
    assert production["summary"]["total"] >= research["summary"]["total"] > 0


async def test_ignore_list_drops_rule_and_recounts(jp_fetch, jp_root_dir):
    write_notebook(jp_root_dir / "bug.ipynb", CELLS)
    full = json.loads((await post(jp_fetch, {"path": "bug.ipynb"})).body)
    code = device_findings(full)[0]["rule"]
    data = json.loads((await post(jp_fetch, {"path": "bug.ipynb", "ignore": [code]})).body)
    assert all(f["rule"] != code for f in data["findings"])
    assert data["summary"]["total"] == len(data["findings"]) < full["summary"]["total"]


async def test_select_and_severity_settings_apply_to_live_cells(jp_fetch, jp_root_dir):
    cells = [{"cell_type": k, "source": src, "id": f"c{i}"} for i, (k, src) in enumerate(CELLS)]
    data = json.loads((await post(jp_fetch, {"cells": cells, "path": "live.ipynb", "select": ["TR4"],
                                             "severity": {"tr401": "LOW"}})).body)
    assert data["findings"] and {f["rule"][:3] for f in data["findings"]} == {"TR4"}
    assert [f["severity"] for f in data["findings"] if f["rule"] == "TR401"] == ["low"]
    code, body = await post_error(jp_fetch, {"cells": cells, "severity": {"TR401": "urgent"}})
    assert code == 400 and "'severity'" in body["message"]


async def test_markdown_report(jp_fetch, jp_root_dir):
    (jp_root_dir / "sub").mkdir()
    write_notebook(jp_root_dir / "sub" / "bug.ipynb", CELLS)
    data = json.loads((await post(jp_fetch, {"path": "sub/bug.ipynb", "format": "markdown"})).body)
    md = data["markdown"]
    assert md.startswith("## Summary") and "## Critical Issues" in md and "## Low Priority Issues" in md
    hit = device_findings(data)[0]
    assert hit["title"] in md
    assert "`sub/bug.ipynb` cell 3, line 3" in md  # people read 1-based cells; paths as the client names them
    assert str(jp_root_dir) not in md
    assert "markdown" not in json.loads((await post(jp_fetch, {"path": "sub/bug.ipynb"})).body)


async def test_review_python_file(jp_fetch, jp_root_dir):
    (jp_root_dir / "mod.py").write_text(BUG, encoding="utf-8")
    data = json.loads((await post(jp_fetch, {"path": "mod.py"})).body)
    check_review_shape(data, "mod.py")
    hits = [f for f in data["findings"] if f["line"] == 3 and f["category"] == "device-handling"]
    assert hits and hits[0]["cell"] is None


async def test_unauthenticated_request_refused(jp_fetch, jp_root_dir):
    write_notebook(jp_root_dir / "bug.ipynb", CELLS)
    code, _ = await post_error(
        jp_fetch, {"path": "bug.ipynb"}, headers={"Authorization": "token not-the-token"}
    )
    assert code in (401, 403)
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await jp_fetch("torchreview-lab", "rules", headers={"Authorization": "token wrong"})
    assert info.value.code in (401, 403)


@pytest.mark.parametrize("path", ["../outside.ipynb", "sub/../../outside.ipynb", "/etc/passwd", "~/x.ipynb"])
async def test_path_traversal_refused(jp_fetch, jp_root_dir, path):
    write_notebook(jp_root_dir.parent / "outside.ipynb", CELLS)
    code, body = await post_error(jp_fetch, {"path": path})
    assert code in (400, 404)
    assert "root" in body["message"] or "absolute" in body["message"]


async def test_symlink_out_of_root_refused(jp_fetch, jp_root_dir, tmp_path_factory):
    outside = write_notebook(tmp_path_factory.mktemp("elsewhere") / "secret.ipynb", CELLS)
    (jp_root_dir / "link.ipynb").symlink_to(outside)
    code, body = await post_error(jp_fetch, {"path": "link.ipynb"})
    assert code in (400, 404) and "outside the server root" in body["message"]


@pytest.mark.parametrize(
    "body, words",
    [
        ("{not json", ["not valid json"]),
        ("", ["empty"]),
        ("[1, 2]", ["json object"]),
        ({"standard": "research"}, ["'path'", "'cells'"]),
        ({"path": "bug.ipynb", "standard": "strict"}, ["unknown standard", "research", "production"]),
        ({"cells": "import torch", "path": "x.ipynb"}, ["'cells' must be a list"]),
        ({"cells": [1], "path": "x.ipynb"}, ["cells[0]"]),
        ({"path": 3}, ["'path' must be a non-empty string"]),
        ({"path": "bug.ipynb", "ignore": "TR101"}, ["'ignore' must be a list"]),
        ({"path": "sub"}, ["directory"]),
        ({"path": "bug.ipynb", "format": "html"}, ["unknown format", "markdown"]),
    ],
)
async def test_bad_requests_are_400_with_a_message(jp_fetch, jp_root_dir, body, words):
    write_notebook(jp_root_dir / "bug.ipynb", CELLS)
    (jp_root_dir / "sub").mkdir()
    code, reply = await post_error(jp_fetch, body)
    assert code == 400, reply
    message = reply["message"].lower()
    for word in words:
        assert word.lower() in message, message


async def test_engine_input_errors_are_400(jp_fetch, jp_root_dir):
    (jp_root_dir / "broken.ipynb").write_text("{ this is not json", encoding="utf-8")
    code, reply = await post_error(jp_fetch, {"path": "broken.ipynb"})
    assert code == 400 and "broken.ipynb" in reply["message"]
    assert str(jp_root_dir) not in reply["message"]  # the server's own paths are not leaked
    write_notebook(jp_root_dir / "r.ipynb", [("code", "x <- 1")], language="R")
    code, reply = await post_error(jp_fetch, {"path": "r.ipynb"})
    assert code == 400 and "r.ipynb" in reply["message"]


async def test_bad_project_config_is_400(jp_fetch, jp_root_dir):
    (jp_root_dir / "proj").mkdir()
    (jp_root_dir / "proj" / "pyproject.toml").write_text('[tool.torchreview]\nstandard = "strict"\n')
    write_notebook(jp_root_dir / "proj" / "bug.ipynb", CELLS)
    for body in ({"path": "proj/bug.ipynb"}, {"path": "proj/bug.ipynb", "cells": [{"cell_type": "code", "source": BUG}]}):
        code, reply = await post_error(jp_fetch, body)
        assert code == 400, reply
        assert "configuration error" in reply["message"] and "proj/pyproject.toml" in reply["message"]
        assert str(jp_root_dir) not in reply["message"]


async def test_project_config_applies_to_live_cells(jp_fetch, jp_root_dir):
    write_notebook(jp_root_dir / "bug.ipynb", CELLS)
    code = device_findings(json.loads((await post(jp_fetch, {"path": "bug.ipynb"})).body))[0]["rule"]
    (jp_root_dir / "pyproject.toml").write_text(f'[tool.torchreview]\nignore = ["{code}"]\n')
    live = [{"cell_type": "markdown", "source": "# t"}, {"cell_type": "code", "source": "x = 1"},
            {"cell_type": "code", "source": BUG}]
    for body in ({"path": "bug.ipynb"}, {"path": "bug.ipynb", "cells": live}):
        data = json.loads((await post(jp_fetch, body)).body)
        assert all(f["rule"] != code for f in data["findings"]), body


async def test_non_file_contents_manager_is_reviewed_through_its_api():
    """A contents manager without files on disk (e.g. S3): the service fetches the content."""
    from torchreview_lab.server import NotFound, ReviewService
    from tornado.web import HTTPError

    nb = json.loads(json.dumps({
        "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "source": BUG, "outputs": [],
                   "execution_count": None}],
        "metadata": {"language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5,
    }))

    class MemoryContents:
        async def get(self, path, content=True):
            if path == "remote/bug.ipynb":
                return {"type": "notebook", "content": nb, "format": "json"}
            if path == "remote/mod.py":
                return {"type": "file", "content": BUG, "format": "text"}
            raise HTTPError(404, f"{path} not found")

    service = ReviewService(MemoryContents())
    data = await service.review({"path": "remote/bug.ipynb"})
    hits = [f for f in data["findings"] if f["category"] == "device-handling" and f["line"] == 3]
    assert hits and hits[0]["path"] == "remote/bug.ipynb" and hits[0]["cell"] == 0
    data = await service.review({"path": "remote/mod.py"})
    assert any(f["path"] == "remote/mod.py" and f["cell"] is None for f in data["findings"])
    with pytest.raises(NotFound):
        await service.review({"path": "remote/missing.ipynb"})


async def test_missing_file_is_404(jp_fetch):
    code, reply = await post_error(jp_fetch, {"path": "nope/missing.ipynb"})
    assert code == 404 and "nope/missing.ipynb" in reply["message"]


async def test_rules_and_schema(jp_fetch):
    rules = json.loads((await jp_fetch("torchreview-lab", "rules")).body)
    assert rules["standards"] == ["research", "production"]
    codes = [r["code"] for r in rules["rules"]]
    assert len(codes) == len(set(codes))
    for r in rules["rules"]:
        assert r["category"] in CATEGORIES and set(r["severities"]) == {"research", "production"}
    schema = json.loads((await jp_fetch("torchreview-lab", "schema")).body)
    assert schema["title"] == "Review"
    assert "rule" in schema["properties"]["findings"]["items"]["properties"]


async def test_server_survives_engine_bug(jp_fetch, jp_root_dir, monkeypatch):
    import torchreview_lab.engine as engine

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(engine, "review_cells", boom)
    code, reply = await post_error(jp_fetch, {"cells": [], "path": "x.ipynb"})
    assert code == 500 and "kaboom" in reply["message"]
    monkeypatch.undo()
    write_notebook(jp_root_dir / "bug.ipynb", CELLS)
    assert (await post(jp_fetch, {"path": "bug.ipynb"})).code == 200
