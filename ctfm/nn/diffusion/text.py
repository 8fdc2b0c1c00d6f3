"""Optional free-text conditioning for the diffusion denoiser: a frozen Hugging Face text encoder, named by the user.

LCTfound encodes its conditions as text with a BERT model. ``ctfm`` conditions on the window numbers without any
text model (:class:`ctfm.nn.diffusion.WindowEmbedding`); a caption per scan ("chest CT, contrast, lung nodule")
can be added through any encoder :mod:`transformers` loads with ``AutoModel`` (BERT, CXR-BERT, a clinical
BioBERT ...). transformers is an optional dependency (``pip install 'ctfm[text]'``): nothing else needs it.

The empty caption ``""`` is the null text. Training drops it in with the null window, and unconditional sampling
uses it, so classifier-free guidance covers the caption too. Captions are padded to ``max_length`` tokens because
MONAI's cross-attention has no padding mask: every caption is then the same number of tokens, in training and in
sampling alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctfm.errors import CTFMError


class HuggingFaceTextEncoder(nn.Module):
    """Captions -> ``(B, max_length, hidden)`` token states of a frozen Hugging Face encoder.

    ``name`` is a Hub model id or a local folder of ``save_pretrained`` files; ``local_files_only`` never asks the
    Hub (an offline machine with the model in its cache, or a folder).
    """

    def __init__(self, name: str, max_length: int = 32, local_files_only: bool = False):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise CTFMError(
                f"text conditioning with {name!r} needs the transformers package: pip install 'ctfm[text]'"
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
            model = AutoModel.from_pretrained(name, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CTFMError(f"text encoder {name!r} could not be loaded: {reason}") from None
        self.name = name
        self.max_length = max_length
        self.model = model.eval().requires_grad_(False)
        self.dim = int(model.config.hidden_size)

    def train(self, mode: bool = True) -> HuggingFaceTextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: dropout stays off, so a caption always has the same tokens
        return self

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            [str(t) for t in texts], padding="max_length", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(device)  # fmt: skip
        return self.model(**tokens).last_hidden_state
