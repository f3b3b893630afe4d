"""CLIP byte-level BPE tokenizer for the text encoder (stream_stage.md §4).

The official pipeline tokenises with transformers' `CLIPTokenizer` from the ModelScope `tokenizer/` folder, which is
the OpenAI CLIP BPE. That folder is not part of the StreamingT2V checkpoint and nothing may be downloaded at run time,
so the merges are read from the copy bundled with the `open_clip_torch` package (`bpe_simple_vocab_16e6.txt.gz`,
the same 48,894 merges; vocabulary 49,408). Conventions of the official tokenizer call
(`padding="max_length", max_length=77, truncation=True`):

* text cleaning as transformers' `CLIPTokenizer` with ftfy installed: `ftfy.fix_text`, runs of whitespace become
  one space, leading/trailing whitespace is stripped, then lower-casing;
* `[BOS] + tokens + [EOS]`, BOS `<|startoftext|>` = 49406, EOS `<|endoftext|>` = 49407;
* longer texts keep their first 75 tokens so that EOS stays the last id;
* padding with id 0 (the pad token is `!`, whose id is 0; padding positions are attended by the encoder);
* because `!` is registered as the pad (special) token, transformers splits the text at every `!` and maps each
  one to id 0 (huggingface/diffusers#4153: `"! !! !!!"` → six 0s). Plain CLIP BPE (open_clip) would give
  `!</w>` = 256 etc. Parity mode (§0.2) keeps the transformers behaviour; `split_pad_token=False` gives the
  plain BPE.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import re as _std_re
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
PAD_ID = 0
PAD_TOKEN = "!"
CONTEXT_LENGTH = 77
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # the CLIP vocabulary keeps the first 48,894 merges of the file

# Pre-tokenisation: special tokens, English contractions, letter runs, single digits, punctuation runs.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = _std_re.compile(r"\s+")


def default_bpe_path() -> Path:
    """Path of the CLIP BPE merges bundled with `open_clip_torch` (found without importing open_clip).

    Raises:
        FileNotFoundError: when the `open_clip_torch` package or its bundled file is not installed.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the CLIP BPE vocabulary is read from the `open_clip_torch` package, which is not installed; "
            "install it (`pip install open_clip_torch`) or pass `bpe_path=` to ClipTokenizer"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"`open_clip_torch` is installed but {BPE_FILE_NAME} was not found in {list(spec.submodule_search_locations)}; "
        "reinstall the package or pass `bpe_path=` to ClipTokenizer"
    )


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (CLIP / GPT-2 byte-level BPE).

    Printable Latin-1 bytes map to themselves; the remaining bytes map to code points 256, 257, ... in byte order.
    The order of the returned dict is the order of the first 256 vocabulary entries (`!` first, hence id 0).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    code_points = printable[:]
    byte_values = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points)}


def clean_text(text: str) -> str:
    """CLIP text normalisation: ftfy repair, whitespace runs collapsed and stripped, lower-cased (§4)."""
    text = ftfy.fix_text(text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


class ClipTokenizer:
    """Text → CLIP token ids `(B, 77)` exactly as the official `CLIPTokenizer` call (stream_stage.md §4).

    Args:
        bpe_path: gzip'd merges file; defaults to the one bundled with `open_clip_torch`.
        context_length: sequence length of the output (77 for the released text encoder).
        split_pad_token: every `!` becomes its own token with id 0, as transformers' `CLIPTokenizer` with pad
            token `!` does in the official pipeline (default, parity). False: plain CLIP BPE as open_clip.
    """

    def __init__(
        self,
        bpe_path: str | os.PathLike[str] | None = None,
        context_length: int = CONTEXT_LENGTH,
        split_pad_token: bool = True,
    ) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must hold at least BOS and EOS, got {context_length}")
        path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{path} does not look like the CLIP BPE merges file: expected {_NUM_MERGES} pairs after the header "
                f"line, found {len(merges)}"
            )
        self.context_length = context_length
        self.split_pad_token = split_pad_token
        self.merges: list[tuple[str, str]] = merges  # type: ignore[assignment]  # (left, right) in rank order
        self._byte_encoder = byte_to_unicode()
        symbols = list(self._byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
        self.encoder: dict[str, int] = {token: index for index, token in enumerate(vocab)}
        self.decoder: dict[int, str] = {index: token for token, index in self.encoder.items()}
        self._ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(self.merges)}
        self._cache: dict[str, list[str]] = {BOS_TOKEN: [BOS_TOKEN], EOS_TOKEN: [EOS_TOKEN]}
        if self.encoder[BOS_TOKEN] != BOS_ID or self.encoder[EOS_TOKEN] != EOS_ID or self.encoder["!"] != PAD_ID:
            raise ValueError(f"{path} produced a vocabulary whose special ids differ from CLIP's (49406/49407/0)")

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49408)."""
        return len(self.encoder)

    def _bpe(self, word: str) -> list[str]:
        """Split one pre-token (already byte-mapped) into BPE symbols, lowest merge rank first."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            best_rank, best_index = None, -1
            for i in range(len(parts) - 1):
                rank = self._ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_index = rank, i
            if best_rank is None:
                break
            first, second = parts[best_index], parts[best_index + 1]
            merged: list[str] = []
            i = 0
            while i < len(parts):  # merge every occurrence of the chosen pair, left to right
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def _encode_chunk(self, text: str) -> list[int]:
        """Clean, pre-tokenise and BPE-encode text that contains no pad-token split point."""
        ids: list[int] = []
        for piece in _WORD_PATTERN.findall(clean_text(text)):
            if piece in (BOS_TOKEN, EOS_TOKEN):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe(mapped))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS/EOS, padding or truncation."""
        if not self.split_pad_token:
            return self._encode_chunk(text)
        ids: list[int] = []
        for index, chunk in enumerate(text.split(PAD_TOKEN)):
            if index:
                ids.append(PAD_ID)  # the `!` between two chunks, matched as the special pad token
            ids.extend(self._encode_chunk(chunk))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Approximate inverse of `encode` (for logs and tests); special tokens are kept as text."""
        byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        data = bytearray()
        for index in ids:
            token = self.decoder[index]
            if token in (BOS_TOKEN, EOS_TOKEN):
                data.extend(token.encode("utf-8"))
                continue
            word_end = token.endswith("</w>")
            data.extend(byte_decoder[c] for c in (token[:-4] if word_end else token))
            if word_end:
                data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: list[str] | str) -> torch.LongTensor:
        """Tokenise a batch of prompts.

        Args:
            texts: prompts (a single string is treated as a batch of one); `""` is the unconditional prompt.

        Returns:
            int64 tensor `(B, context_length)`: `[49406, t_1, ..., t_n, 49407, 0, ..., 0]`, with n ≤ 75 tokens kept.
        """
        if isinstance(texts, str):
            texts = [texts]
        keep = self.context_length - 2
        ids = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [BOS_ID] + self.encode(text)[:keep] + [EOS_ID]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids  # type: ignore[return-value]
