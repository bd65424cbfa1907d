"""CLIP's byte-level BPE tokenizer, built from its merges file with the ``tokenizers`` library.

The merges file is the one CLIP models ship: open_clip's ``bpe_simple_vocab_16e6.txt.gz`` or a
model folder's ``merges.txt`` (a "#version" line, then one merge "a b" per line). The vocabulary
follows from it as in CLIP: the 256 byte symbols, the same with the end-of-word marker
"</w>", one token per merge (as many as the model's vocabulary has room for), then
<start_of_text> and <end_of_text>. Text is cleaned as open_clip's default tokenizer does
(HTML entities unescaped, whitespace collapsed, lower case); open_clip's extra pass through
``ftfy`` (repairing mojibake) is not applied.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from featgs.errors import FeatgsError

END_OF_WORD = "</w>"
# CLIP's pre-tokenisation: contractions, runs of letters, single digits, runs of other symbols.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MERGES_FILES = ("bpe_simple_vocab_16e6.txt.gz", "merges.txt")


def find_merges(tokenizer: Optional[str | Path], checkpoint: Path) -> Path:
    """The merges file: ``tokenizer`` if given, else one beside the checkpoint, else the one an
    installed open_clip package carries (located, not imported)."""
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise FeatgsError(f"{path}: no such CLIP tokenizer (BPE merges) file")
        return path
    folders = [checkpoint.parent]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) for p in spec.submodule_search_locations]
    for folder in folders:
        for name in MERGES_FILES:
            if (folder / name).is_file():
                return folder / name
    raise FeatgsError(f"CLIP text needs the model's BPE merges file: pass --clip-tokenizer PATH "
                      f"({' or '.join(MERGES_FILES)}), or put it beside {checkpoint}")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of the bytes 0..255, in CLIP's vocabulary order (GPT-2's table:
    printable Latin-1 bytes stand for themselves, the others for code points from 256 on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(others))]


class ClipTokenizer:
    """Texts -> [n, context_length] token ids, as open_clip's ``SimpleTokenizer`` gives them.

    Args:
        merges_file: the BPE merges (.txt or .txt.gz).
        vocab_size: the text tower's vocabulary size; it fixes how many merges are used.
        context_length: token positions of the text tower.
    """

    def __init__(self, merges_file: Path, vocab_size: int, context_length: int):
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        symbols = _byte_symbols()
        n_merges = vocab_size - 2 * len(symbols) - 2
        opener = gzip.open if merges_file.suffix == ".gz" else open
        try:
            with opener(merges_file, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")[1:]
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise FeatgsError(f"{merges_file}: unreadable BPE merges file ({e.__class__.__name__})") from None
        merges = [tuple(line.split()) for line in lines[:n_merges]]
        if n_merges < 0 or len(merges) < n_merges or any(len(m) != 2 for m in merges):
            raise FeatgsError(f"{merges_file}: not the BPE merges of a {vocab_size}-token CLIP vocabulary "
                              f"(needs {max(n_merges, 0)} lines of two symbols after the first)")
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.start, self.end = len(vocab) - 2, len(vocab) - 1
        self.context_length = context_length
        bpe = models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, end_of_word_suffix=END_OF_WORD)
        self._tokenizer = Tokenizer(bpe)
        self._tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])

    def __call__(self, texts: list[str]) -> Tensor:
        """[n, context_length] int64: start, the text's tokens, end, zeros; cut to fit (ending in end)."""
        cleaned = [" ".join(html.unescape(html.unescape(t)).split()) for t in texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.int64)
        for row, encoding in enumerate(self._tokenizer.encode_batch(cleaned)):
            ids = [self.start, *encoding.ids, self.end][: self.context_length]
            ids[-1] = self.end
            out[row, : len(ids)] = torch.tensor(ids)
        return out
