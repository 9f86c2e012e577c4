"""Named sections of BENCHMARKS.md, each written by its own benchmark script, and the
fresh-process worker runs the scripts share.

A section is the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; a script
replaces its own section (or appends it) and leaves the others as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: Path, name: str, text: str) -> None:
    """Writes ``text`` (which starts and ends with the markers of ``name``) into ``path``."""
    begin, end = markers(name)
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    path.write_text(new)


def sections(text: str) -> list[str]:
    """Every marked section of ``text``, markers included, in order."""
    pattern = r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->"
    return [m.group(0) for m in re.finditer(pattern, text, flags=re.S)]


def run_worker(cmd: list[str], key: dict, env: dict | None = None, timeout: float = 1800) -> dict:
    """Runs a benchmark's worker ``cmd`` in a fresh process (so that its peak RSS is its own)
    and returns the JSON of its last output line, or ``key`` with ``"error"`` (the last line
    of its stderr) when it fails."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"
        return {**key, "error": err}
    return json.loads(res.stdout.strip().splitlines()[-1])


def publish(path: Path, name: str, text: str, quick: bool) -> None:
    """Prints a script's section and writes it into ``path`` unless the run was ``quick``."""
    print(text)
    if not quick:
        write_section(path, name, text)


def script_parser(doc: str, out: Path, iters: int, warmup: int) -> argparse.ArgumentParser:
    """The options every sectioned script takes: ``--worker`` (run one configuration and print
    its JSON), ``--iters``, ``--warmup``, ``--threads``, ``--quick`` (print, do not write) and
    ``--out``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(out))
    return p
