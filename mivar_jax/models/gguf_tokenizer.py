"""A Hugging Face fast tokenizer built from a GGUF file's byte-level BPE vocabulary.

transformers' own GGUF tokenizer path needs PyTorch; this one needs only ``tokenizers`` (and
returns a ``transformers.PreTrainedTokenizerFast``). Supported: ``tokenizer.ggml.model = gpt2``
(byte-level BPE: GPT-2, SmolLM/SmolLM2, Qwen2, Llama 3) with the pre-tokenizers below.
"""

from __future__ import annotations

import functools

from mivar_jax.models.checkpoint import CheckpointError, GGUFFile

# Split patterns of the pre-tokenizers that differ from GPT-2's (llama.cpp's ``tokenizer.ggml.pre``).
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama-bpe": _LLAMA3, "llama3": _LLAMA3, "llama-v3": _LLAMA3, "qwen2": _QWEN2}
_GPT2_LIKE = ("gpt2", "default", "smollm", None)

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_gguf_tokenizer(f: GGUFFile, name: str | None = None):
    """The file's tokenizer as a ``PreTrainedTokenizerFast`` (no special tokens added on encode);
    its ``name_or_path`` is ``name`` (default: the file's path)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = f.meta("tokenizer.ggml.model", None)
    if kind != "gpt2":
        raise CheckpointError(
            f"{f.path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') vocabularies are built from GGUF. "
            "Pass tokenizer=PATH (a Hugging Face tokenizer directory) instead"
        )
    pre = f.meta("tokenizer.ggml.pre", None)
    if pre not in _GPT2_LIKE and pre not in _SPLITS:
        raise CheckpointError(
            f"{f.path}: pre-tokenizer {pre!r} is not supported (supported: {sorted(p for p in _GPT2_LIKE if p)} + "
            f"{sorted(_SPLITS)}); pass tokenizer=PATH instead"
        )
    tokens = [str(t) for t in f.meta("tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in f.meta("tokenizer.ggml.merges")]
    types = list(f.meta("tokenizer.ggml.token_type", [1] * len(tokens)))

    alphabet = _byte_alphabet()
    allowed = set(alphabet.values())
    vocab = {}
    for i, t in enumerate(tokens):
        spelled = t if set(t) <= allowed else "".join(alphabet[b] for b in t.encode("utf-8"))
        vocab.setdefault(spelled, i)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = [
        AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True) if k == _CONTROL
    ]
    user = [
        AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types, strict=True) if k == _USER_DEFINED
    ]
    tok.add_special_tokens(special)
    tok.add_tokens(user)

    def token(key):
        idx = f.meta(f"tokenizer.ggml.{key}", None)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        clean_up_tokenization_spaces=False,
        name_or_path=name or f.path,
    )
