"""The C++ kernels' argument checks raise the Python exception types of the reference path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from graphattn import ops

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def test_every_kernel_check_raises_value_or_type_error():
    """A plain ``TORCH_CHECK`` raises ``RuntimeError``, so a caller's ``except ValueError``
    would work on the reference path and not on the native one: every check in ``csrc/`` is
    ``TORCH_CHECK_VALUE`` or ``TORCH_CHECK_TYPE`` (the per-op tests match their messages)."""
    plain = [f"{p.relative_to(CSRC)}:{n}" for p in sorted(CSRC.rglob("*")) if p.is_file()
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bTORCH_CHECK\(", line)]
    assert not plain, f"plain TORCH_CHECK (RuntimeError) at {plain}"
    assert len(list(CSRC.rglob("*.cpp"))) >= 5  # the scan saw the kernels


@pytest.mark.skipif(not ops.native_available(), reason="graphattn._C not built")
@pytest.mark.parametrize("ptr", [[0, 2, 5], [1, 3], [0, 3, 1, 3]])
def test_bad_row_pointers_raise_value_error_on_both_backends(ptr):
    """Row pointers that do not tile the rows: ``ValueError`` from the reference path, from the
    native path and from the kernel called directly."""
    x, p = torch.randn(3, 2), torch.tensor(ptr)
    for name in ("native", "reference"):
        with ops.set_backend(name), pytest.raises(ValueError, match="'ptr"):
            ops.segment_sum(x, p)
    with pytest.raises(ValueError, match="'ptr"):
        torch.ops.graphattn.segment_reduce(x, p, "sum")
