"""The panel's TypeScript types are generated from the Python schema and must be current."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from torchreview_lab.findings import CATEGORIES, SEVERITIES, STANDARDS, finding_json_schema

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "labextension" / "src" / "findings.gen.ts"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_ts_types", ROOT / "scripts" / "gen_ts_types.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_types_are_current(gen):
    assert GEN.read_text(encoding="utf-8") == gen.generate(), (
        "labextension/src/findings.gen.ts is stale: run `python scripts/gen_ts_types.py`"
    )
    assert gen.main(["--check"]) == 0


def test_finding_interface_has_every_schema_field(gen):
    text = gen.generate()
    body = re.search(r"export interface Finding \{(.*?)\n\}", text, re.S).group(1)
    fields = re.findall(r"^  (\w+)\??:", body, re.M)
    assert fields == list(finding_json_schema()["properties"])
    assert re.search(r"^  cell: number \| null;$", body, re.M)
    assert re.search(r"^  fix: null \| Fix;$", body, re.M)
    for name, values in (("Severity", SEVERITIES), ("Category", CATEGORIES), ("Standard", STANDARDS)):
        assert f"export type {name} = " + " | ".join(f"'{v}'" for v in values) + ";" in text


def test_schema_change_changes_the_types(gen, monkeypatch):
    """The check can fail: a new field in the Python schema shows up in the TypeScript."""
    before = gen.generate()
    original = gen.review_json_schema

    def patched():
        schema = original()
        schema["properties"]["findings"]["items"]["properties"]["confidence"] = {"type": "number"}
        return schema

    monkeypatch.setattr(gen, "review_json_schema", patched)
    after = gen.generate()
    assert after != before and "  confidence?: number;" in after


def test_frontend_uses_generated_types_only():
    """No hand-written copy of the Finding shape in the TypeScript sources."""
    for src in (ROOT / "labextension" / "src").glob("*.ts*"):
        if src.name == GEN.name:
            continue
        text = src.read_text(encoding="utf-8")
        assert not re.search(r"(interface|type)\s+Finding\b", text), src
