"""Text encoders: prompts -> [B, text_len, dim] embeddings for the DiT's cross-attention.

Wan conditions on umT5-XXL (4096 wide, 512 tokens). Its embeddings are zero past each prompt's
tokens, and Wan, Self-Forcing and diffusers all attend to those zeros rather than masking them,
so every encoder here returns zero-padded embeddings and no mask.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import ftfy
import torch


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (its tokenizer's `clean='whitespace'`, diffusers' `prompt_clean`):
    fix mojibake, unescape HTML twice (for double-escaped `&amp;amp;`), collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder(Protocol):
    dim: int
    text_len: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [B, text_len, dim], zero past each prompt's tokens."""
        ...

    def overflow(self, prompt: str) -> tuple[int, int | None]:
        """(the cleaned prompt's length in tokens, special tokens included; the character index in
        `clean_prompt(prompt)` where the first token `encode` drops begins, None when it all fits).
        The end-of-text token takes the `text_len`-th place, so the text from the `text_len`-th
        token on is dropped."""
        ...


def overflow_note(encoder: TextEncoder, prompt: str, what: str = "the prompt") -> str | None:
    """One line telling that `encode` reads only part of `prompt`, or None when it all fits.
    Every encoder here cuts at `text_len` tokens, as Wan's umT5 does at 512 (the shipped model's
    MiniLM at 32); the CLI, the API's `notes` and the browser show this line so that a long prompt
    is never cut silently. A cut inside a word names the part of it that is read."""
    count, cut = encoder.overflow(prompt)
    if cut is None:
        return None
    text = clean_prompt(prompt)
    cut += text[cut:cut + 1] == " "  # a sentencepiece word piece begins at the space before its word
    start = text.rfind(" ", 0, cut) + 1  # the start of the word the cut falls in
    rest = text[start:]
    rest = rest if len(rest) <= 60 else rest[:57].rstrip() + "..."
    partial = f" (reading only {text[start:cut]!r} of its first word)" if cut > start else ""
    return (f"{what} is {count} tokens; the text encoder reads the first {encoder.text_len}, so it ignores "
            f"{rest!r}{partial}")


def uncut_copy(tokenizer):
    """A copy of a `tokenizers.Tokenizer` that neither truncates nor pads, for `token_overflow`:
    changing those settings on a tokenizer `encode` uses would change what `encode` reads."""
    from tokenizers import Tokenizer

    counter = Tokenizer.from_str(tokenizer.to_str())
    counter.no_truncation()
    counter.no_padding()
    return counter


def token_overflow(counter, text: str, text_len: int) -> tuple[int, int | None]:
    """`TextEncoder.overflow` for an encoder whose tokenizer keeps the first `text_len` tokens,
    the end-of-text token last: `counter` (an `uncut_copy`) tokenizes the cleaned `text`."""
    enc = counter.encode(text)
    if len(enc.ids) <= text_len:
        return len(enc.ids), None
    return len(enc.ids), enc.offsets[text_len - 1][0]  # the first token that does not fit


class UMT5TextEncoder:
    """umT5 encoder (transformers' `UMT5EncoderModel`) with Wan's tokenization and zero padding."""

    def __init__(self, tokenizer, model, text_len: int = 512):
        self.tokenizer = tokenizer
        # Wan keeps the first seq_len outputs and pads after them: that needs right padding.
        self.tokenizer.padding_side = "right"
        # `overflow` counts on a copy: calling a fast tokenizer without truncation or padding switches
        # them off on its shared backend, under an `encode` that may be running on another thread.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._counter = uncut_copy(backend) if backend is not None else None
        self.model = model.eval().requires_grad_(False)
        self.text_len = text_len
        self.dim = model.config.d_model

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
        text_len: int = 512,
    ) -> UMT5TextEncoder:
        """A Wan-diffusers pipeline folder (`tokenizer/`, `text_encoder/`) or one folder holding both."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        if (folder / "text_encoder").is_dir():
            tok_dir, enc_dir = folder / "tokenizer", folder / "text_encoder"
        else:
            tok_dir = enc_dir = folder
        if not (enc_dir / "config.json").is_file():
            raise ValueError(f"no umT5 encoder at {folder}: expected config.json there or in text_encoder/")
        if not tok_dir.is_dir():
            raise ValueError(f"no tokenizer at {tok_dir}")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(enc_dir, dtype=dtype, local_files_only=True).to(device)
        return cls(tokenizer, model, text_len)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        device = self.model.device
        mask = tokens.attention_mask.to(device)
        out = self.model(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        # Same as Wan's `[u[:n] for u, n in zip(out, seq_lens)]` + zero padding, given right padding;
        # masked_fill writes +0.0 where `* mask` would leave -0.0.
        return out.masked_fill(mask[..., None] == 0, 0.0)

    def overflow(self, prompt: str) -> tuple[int, int | None]:
        text = clean_prompt(prompt)
        if self._counter is not None:
            return token_overflow(self._counter, text, self.text_len)
        # a slow tokenizer: calls leave its settings alone, but it gives no offsets
        ids = self.tokenizer(text, add_special_tokens=True).input_ids
        if len(ids) <= self.text_len:
            return len(ids), None
        dropped = self.tokenizer.decode(ids[self.text_len - 1:], skip_special_tokens=True).strip()
        return len(ids), max(0, len(text) - len(dropped))


class HashTextEncoder:
    """A deterministic stand-in for umT5 with no weights, for tests and the random tiny model.

    Each cleaned prompt seeds a generator from a stable hash (sha256, not Python's salted `hash`)
    and gets fixed Gaussian rows for its words plus one (the end-of-text token a tokenizer adds),
    zeros after. The embeddings carry no meaning: equal prompts agree, different prompts differ.
    """

    def __init__(self, dim: int, text_len: int = 512, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.dim, self.text_len = dim, text_len
        self.device, self.dtype = torch.device(device), dtype

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.dim)
        for i, prompt in enumerate(prompts):
            text = clean_prompt(prompt)
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            n = min(len(text.split()) + 1, self.text_len)
            # Drawn on the CPU so the values are the same on every device.
            out[i, :n] = torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed))
        return out.to(device=self.device, dtype=self.dtype)

    def overflow(self, prompt: str) -> tuple[int, int | None]:
        """As the protocol's, by words. An approximation for this stand-in: its rows are seeded from
        the whole text, so the dropped words still change the rows that are kept."""
        words = list(re.finditer(r"\S+", clean_prompt(prompt)))
        kept = self.text_len - 1  # the end-of-text row takes the last place
        return len(words) + 1, words[kept].start() if len(words) > kept else None


class CachedTextEncoder:
    """LRU cache of per-prompt embeddings in front of any encoder: a repeated prompt costs nothing.

    Keyed by the raw prompt string; `hits` and `misses` count prompts, not calls.
    """

    def __init__(self, encoder: TextEncoder, max_size: int = 64):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.encoder, self.max_size = encoder, max_size
        self.dim, self.text_len = encoder.dim, encoder.text_len
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def overflow(self, prompt: str) -> tuple[int, int | None]:
        return self.encoder.overflow(prompt)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        found = {}
        if missing:
            # One batched call for every new prompt; rows cloned so an entry never pins its whole batch.
            found = {p: row.clone() for p, row in zip(missing, self.encoder.encode(missing))}
        for p in prompts:
            if p in self._cache:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
                self.hits += 1
            else:
                self._cache[p] = found[p]
                self.misses += 1
        while len(self._cache) > self.max_size:
            self._cache.popitem(last=False)
        return torch.stack([found[p] for p in prompts])
