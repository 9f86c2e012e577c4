"""BENCHMARKS.md holds one section per benchmark script; each script rewrites its own only."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _sections import markers, sections, write_section  # noqa: E402


def _section(name: str, body: str) -> str:
    begin, end = markers(name)
    return f"{begin}\n{body}\n{end}"


def test_write_section_replaces_its_own_and_keeps_the_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nCPU tables\n")
    write_section(path, "tokens", _section("tokens", "tokens v1"))
    write_section(path, "cuda", _section("cuda", "gpu v1"))
    write_section(path, "tokens", _section("tokens", "tokens v2"))
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nCPU tables")
    assert "tokens v1" not in text and "tokens v2" in text and "gpu v1" in text
    assert text.index("tokens v2") < text.index("gpu v1")  # replaced in place


def test_sections_finds_every_marked_section_in_order():
    text = "\n".join(["head", _section("tokens", "a"), "middle", _section("cuda", "b\nc")])
    found = sections(text)
    assert found == [_section("tokens", "a"), _section("cuda", "b\nc")]
    # an unterminated or mismatched marker is not a section
    assert sections("<!-- tokens:begin -->\nx\n<!-- cuda:end -->") == []
