"""A word-level CLIP-compatible tokenizer built in code, so tiny and toy models need no hub download."""
from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIALS = ["<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"]


def build_word_tokenizer(words: list[str], max_length: int = 16) -> PreTrainedTokenizerFast:
    """One token per lower-case word; BOS/EOS wrapped like CLIP so backends treat it like CLIP's tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=max_length,
    )
