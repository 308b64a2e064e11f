from pathlib import Path

import pytest
import torch

from streamer.models.text import CachedTextEncoder, HashTextEncoder, UMT5TextEncoder, clean_prompt, overflow_note

WORDS = "a cat runs on the beach at sunset red car drives through city street & rain".split()


def save_tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer built offline (no hub): pad 0, eos 1, unk 2, eos appended like umT5's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def save_tiny_umt5(folder: Path) -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    cfg = UMT5Config(
        vocab_size=3 + len(set(WORDS)), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
    )
    UMT5EncoderModel(cfg).save_pretrained(folder)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wan_pipe")
    save_tiny_tokenizer(root / "tokenizer")
    save_tiny_umt5(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def encoder(pipeline_folder) -> UMT5TextEncoder:
    return UMT5TextEncoder.from_pretrained(pipeline_folder, dtype=torch.float32)


def test_clean_prompt():
    assert clean_prompt("  a   cat\n\tsits &amp;amp; purrs  ") == "a cat sits & purrs"
    assert clean_prompt("cafÃ©  latte") == "café latte"  # mojibake fixed by ftfy
    assert clean_prompt("&lt;b&gt;") == "<b>"


def test_umt5_encode_matches_direct_run_and_zero_pads(encoder):
    prompts = ["a cat runs on the beach", "red car"]
    emb = encoder.encode(prompts)
    assert emb.shape == (2, 512, 32) and encoder.dim == 32 and encoder.text_len == 512
    model, tok = encoder.model, encoder.tokenizer
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, return_tensors="pt").input_ids  # words + </s>, no padding
        n = ids.shape[1]
        assert n == len(prompt.split()) + 1
        with torch.no_grad():
            direct = model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(emb[i, :n], direct, atol=1e-5, rtol=1e-5)
        assert (emb[i, n:] == 0).all() and not torch.signbit(emb[i, n:]).any()
        assert (emb[i, :n].abs().sum(-1) > 0).all()


def test_umt5_truncates_to_text_len(pipeline_folder):
    enc = UMT5TextEncoder.from_pretrained(pipeline_folder, dtype=torch.float32, text_len=8)
    emb = enc.encode(["a cat runs on the beach at sunset red car drives", "cat"])
    assert emb.shape == (2, 8, 32)
    assert (emb[0].abs().sum(-1) > 0).all() and (emb[1, 2:] == 0).all()


def test_umt5_plain_folder_layout(pipeline_folder, encoder, tmp_path):
    save_tiny_tokenizer(tmp_path)
    encoder.model.save_pretrained(tmp_path)
    plain = UMT5TextEncoder.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(plain.encode(["the cat"]), encoder.encode(["the cat"]), atol=0, rtol=0)


def test_umt5_bad_folder(tmp_path):
    with pytest.raises(ValueError, match="no umT5 encoder"):
        UMT5TextEncoder.from_pretrained(tmp_path)


def test_hash_encoder_is_deterministic_and_distinct():
    enc = HashTextEncoder(dim=32, text_len=16)
    a, b = enc.encode(["a cat  runs", "a dog runs"])
    assert a.shape == (16, 32)
    torch.testing.assert_close(HashTextEncoder(32, 16).encode(["a cat runs"])[0], a, atol=0, rtol=0)
    assert (a[:4] != 0).all() and (a[4:] == 0).all()  # 3 words + end token
    assert not torch.equal(a[:4], b[:4])


def test_cached_encoder_hits_and_evicts():
    inner = HashTextEncoder(dim=8, text_len=4)
    calls = []
    encode = inner.encode
    inner.encode = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    cached = CachedTextEncoder(inner, max_size=2)
    assert (cached.dim, cached.text_len) == (8, 4)

    first = cached.encode(["a cat"])
    again = cached.encode(["a cat", "a cat"])
    assert (cached.misses, cached.hits) == (1, 2) and calls == [["a cat"]]
    torch.testing.assert_close(again[0], first[0], atol=0, rtol=0)
    torch.testing.assert_close(again[1], first[0], atol=0, rtol=0)

    cached.encode(["b", "c"])  # evicts "a cat", the least recently used
    assert calls[-1] == ["b", "c"]
    cached.encode(["a cat"])
    assert calls[-1] == ["a cat"] and cached.misses == 4


@torch.no_grad()
def test_minilm_forward_equals_transformers_bert():
    """The default model's text encoder (BERT written out in torch over `tokenizers`, for cold start)
    gives what transformers' own BertModel gives on the same weights and tokens."""
    from transformers import AutoModel, AutoTokenizer

    from streamer.models.sentence import MiniLMTextEncoder, minilm_path

    prompts = ["a red circle and a blue square on a sand background", "a star", "Ünïcode  ball!!"]
    ours = MiniLMTextEncoder(text_len=32).encode(prompts)
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)(
        [clean_prompt(p) for p in prompts], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    ref = AutoModel.from_pretrained(path, local_files_only=True).eval()(
        input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
    ref = ref.masked_fill(tok.attention_mask[..., None] == 0, 0.0)
    assert ours.shape == (3, 32, 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours[1, 5:] == 0).all() and ours[1, :3].abs().sum() > 0  # "[CLS] a star [SEP]": 4 tokens, zeros after


LONG = "a red circle moving slowly from the left edge of the frame to the right edge over a bright green " \
       "grass background, while a blue square waits at the top and a yellow star spins"


def test_overflow_names_what_each_encoder_drops(pipeline_folder):
    """A long prompt is cut at text_len tokens by every encoder; `overflow` gives the token count
    and where the dropped text begins, and encoding the kept part alone gives the same embedding, so
    the note tells exactly what the model never sees."""
    from streamer.models.sentence import MiniLMTextEncoder

    umt5 = UMT5TextEncoder.from_pretrained(pipeline_folder, dtype=torch.float32, text_len=8)
    cases = [(MiniLMTextEncoder(text_len=32), LONG, 38),
             (CachedTextEncoder(MiniLMTextEncoder(text_len=16)), LONG, 38),
             (umt5, "a cat runs on the beach at sunset red car drives through city", 14),
             (HashTextEncoder(dim=8, text_len=6), "a cat runs on the beach at sunset", 9)]
    for enc, prompt, count in cases:
        n, cut = enc.overflow(prompt)
        assert n == count and cut, type(enc).__name__
        kept = clean_prompt(prompt)[:cut]
        assert enc.overflow(kept) == (enc.text_len, None)  # the kept part fills the encoder exactly
        if not isinstance(enc, HashTextEncoder):  # the hash seeds its rows from the whole text
            torch.testing.assert_close(enc.encode([prompt]), enc.encode([kept]), atol=0, rtol=0)
    hash_enc = cases[-1][0]
    assert hash_enc.overflow("a cat runs") == (4, None)
    assert overflow_note(hash_enc, "a cat runs") is None
    assert overflow_note(hash_enc, "a cat runs on the  beach at sunset", "--prompt") == (
        "--prompt is 9 tokens; the text encoder reads the first 6, so it ignores 'beach at sunset'")
    long_note = overflow_note(hash_enc, "word " * 5000)
    assert long_note.startswith("the prompt is 5001 tokens") and len(long_note) < 200


def test_a_cut_inside_a_word_names_the_part_read(tmp_path):
    """A sentencepiece tokenizer (umT5's kind) splits an unknown word into a bare word-start piece
    and its letters: the note starts at the first piece dropped, and a word cut in two says which
    part of it the encoder reads. The fast tokenizer's own settings stay as `encode` needs them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), ("\u2581a", -1.0),
             ("\u2581cat", -1.0), ("\u2581runs", -1.0), ("x", -3.0), ("y", -3.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                pad_token_id=0, eos_token_id=1)).save_pretrained(tmp_path)
    prompt = "a cat xy runs a cat"  # \u2581a \u2581cat \u2581 x y \u2581runs \u2581a \u2581cat </s>: 9 tokens
    notes = []
    for text_len in (4, 5, 6):
        enc = UMT5TextEncoder.from_pretrained(tmp_path, dtype=torch.float32, text_len=text_len)
        notes.append(overflow_note(enc, prompt))
        assert enc.encode([prompt]).shape == (1, text_len, 16)  # encode still cuts and pads
    assert notes == [
        "the prompt is 9 tokens; the text encoder reads the first 4, so it ignores 'xy runs a cat'",
        "the prompt is 9 tokens; the text encoder reads the first 5, so it ignores 'xy runs a cat' "
        "(reading only 'x' of its first word)",
        "the prompt is 9 tokens; the text encoder reads the first 6, so it ignores 'runs a cat'"]
