"""Tokenizers behind one small interface: a byte-level one for the built-in ``tiny`` preset (no download), and a
wrapper around Hugging Face tokenizers for real models.

The byte tokenizer also exists as a stock Hugging Face fast tokenizer (``ByteTokenizer.as_transformers()``), so
a merged ``tiny`` model's folder loads with ``AutoTokenizer.from_pretrained(folder)`` like any other::

    ByteTokenizer().as_transformers().save_pretrained(folder)   # tokenizer.json + tokenizer_config.json
    AutoTokenizer.from_pretrained(folder).encode("hé", add_special_tokens=False)   # [104, 195, 169]
"""

from __future__ import annotations

from typing import Protocol


class TextTokenizer(Protocol):
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then BOS, EOS and PAD. Identical everywhere, nothing to download."""

    vocab_size = 259
    chat_template: str | None = None  # chat data gets swarm.chat_template's documented default
    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def as_transformers(self):
        """This tokenizer as a ``transformers`` PreTrainedTokenizerFast with the same ids: a byte-level BPE with
        no merges (each byte one token, id = byte value, through GPT-2's byte-to-character table), then
        ``<bos>``, ``<eos>``, ``<pad>`` as 256, 257, 258."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {char: byte for byte, char in _gpt2_byte_chars().items()}
        vocab.update({"<bos>": self.bos_token_id, "<eos>": self.eos_token_id, "<pad>": self.pad_token_id})
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                       pad_token="<pad>")


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the one the ``tokenizers`` ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


class HuggingFaceTokenizer:
    """Adapts a ``transformers`` tokenizer to TextTokenizer (special tokens added by us, not by it)."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.eos_token_id = hf_tokenizer.eos_token_id if hf_tokenizer.eos_token_id is not None else 0
        self.bos_token_id = hf_tokenizer.bos_token_id if hf_tokenizer.bos_token_id is not None else self.eos_token_id
        pad = hf_tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_id

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template (Jinja source), if it ships one."""
        template = getattr(self.hf, "chat_template", None)
        return template if isinstance(template, str) and template.strip() else None

    @property
    def bos_text(self) -> str | None:
        """How the BOS token is spelt in text (a chat template may write it; encode() adds it itself)."""
        token = getattr(self.hf, "bos_token", None)
        return token if isinstance(token, str) and token else None

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """``messages`` rendered as text with the model's chat template."""
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)
