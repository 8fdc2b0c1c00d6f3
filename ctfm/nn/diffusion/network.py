"""The window-conditioned denoiser: MONAI's ``DiffusionModelUNet`` with a small numeric embedding of the CT window.

LCTfound conditions its U-Net on the window width and level through cross-attention (it encodes them as text with
BERT; here the two numbers go through a two-layer MLP, no text model). The same window vector is also added to the
timestep embedding, through MONAI's class-embedding slot filled with a linear map instead of a lookup table, so
every residual block sees the window (the class conditioning of Dhariwal and Nichol): cross-attention alone reaches
only the attention levels, and with a single context token it is one constant per level. The condition is dropped
during training by replacing the window with :data:`NULL_WINDOW`; a width <= 0 can never be a real window, so every
row whose width is <= 0 maps to one learned null token. Sampling with classifier-free guidance feeds the same null
window, which is also MONAI's ``DiffusionInferer.sample(cfg=..., cfg_fill_value=-1)`` convention, so training and
sampling agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from ctfm.errors import CTFMError

#: The "no condition" window (width, level); any width <= 0 counts as null.
NULL_WINDOW = -1.0
#: Windows are given in HU; divided by this before the MLP so its inputs are of order one.
_HU_SCALE = 1000.0

#: Network sizes. ``lctfound``: five levels 64-1024, two residual blocks, attention (self + cross) at the middle
#: three, as LCTfound's 256 x 256 2D model; ``small`` and ``tiny`` train on a CPU (attention at the deepest level
#: only: full-resolution attention is what makes a CPU step slow).
PRESETS: dict[str, dict[str, Any]] = {
    "lctfound": {
        "channels": (64, 128, 256, 512, 1024),
        "attention_levels": (False, True, True, True, False),
        "num_res_blocks": 2,
        "num_head_channels": 64,
        "norm_num_groups": 32,
        "context_dim": 256,
    },
    "small": {
        "channels": (32, 64, 128),
        "attention_levels": (False, False, True),
        "num_res_blocks": 1,
        "num_head_channels": 32,
        "norm_num_groups": 16,
        "context_dim": 64,
    },
    "tiny": {
        "channels": (8, 16, 16),
        "attention_levels": (False, False, True),
        "num_res_blocks": 1,
        "num_head_channels": 8,
        "norm_num_groups": 8,
        "context_dim": 16,
    },
}


class WindowEmbedding(nn.Module):
    """``(B, 2)`` or ``(B, 1, 2)`` windows (width, level) in HU -> ``(B, 1, dim)`` cross-attention context."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_token = nn.Parameter(torch.zeros(dim))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.reshape(-1, 2).to(self.null_token.dtype)
        embedded = self.mlp(windows / _HU_SCALE)
        null = (windows[:, 0] <= 0)[:, None]
        return torch.where(null, self.null_token.expand_as(embedded), embedded)[:, None, :]


class WindowConditionedUNet(nn.Module):
    """``forward(x, timesteps, context)`` as MONAI's U-Net, where ``context`` is the raw windows (None = null)."""

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        attention_levels: Sequence[bool],
        num_res_blocks: int = 2,
        num_head_channels: int = 64,
        norm_num_groups: int = 32,
        context_dim: int = 256,
        in_channels: int = 1,
        text_encoder: str | nn.Module | None = None,
    ):
        """``text_encoder``: optional free-text conditioning, a Hugging Face model name (or folder) or a module
        mapping captions to ``(B, L, dim)`` tokens with a ``dim`` attribute (:mod:`ctfm.nn.diffusion.text`); its
        tokens, projected to ``context_dim``, join the window token in cross-attention."""
        super().__init__()
        if spatial_dims not in (2, 3):
            raise CTFMError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.embedding = WindowEmbedding(context_dim)
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            with_conditioning=True,
            cross_attention_dim=context_dim,
            num_class_embeds=1,  # a placeholder: the slot is filled with the window projection below
        )
        # MONAI adds ``class_embedding(class_labels)`` to the timestep embedding; a linear map of the window vector
        # takes the lookup table's place.
        time_embed = cast(nn.Linear, self.unet.time_embed[-1])
        self.unet.add_module("class_embedding", nn.Linear(context_dim, time_embed.out_features))
        if isinstance(text_encoder, str):
            from ctfm.nn.diffusion.text import HuggingFaceTextEncoder

            text_encoder = HuggingFaceTextEncoder(text_encoder)
        self.text_encoder = text_encoder
        self.text_projection: nn.Linear | None = None
        if text_encoder is not None:
            dim = getattr(text_encoder, "dim", None)
            if not isinstance(dim, int):
                raise CTFMError(f"text_encoder {type(text_encoder).__name__} needs an int `dim` (its token width)")
            self.text_projection = nn.Linear(dim, context_dim)

    @property
    def downsampling(self) -> int:
        """Each spatial size must be a multiple of this."""
        return 2 ** (len(self.unet.block_out_channels) - 1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """``context``: windows ``(B, 2)`` in HU (None = null); ``texts``: one caption per image (None or ``""`` =
        the null text), only for a denoiser built with a text encoder."""
        if context is None:
            context = torch.full((x.shape[0], 2), NULL_WINDOW, device=x.device)
        if timesteps.ndim == 1 and timesteps.numel() == 1 and x.shape[0] > 1:
            timesteps = timesteps.expand(x.shape[0])
        token = self.embedding(context)
        tokens = token
        if self.text_encoder is not None and self.text_projection is not None:
            captions = [""] * x.shape[0] if texts is None else list(texts)
            if len(captions) != x.shape[0]:
                raise CTFMError(f"{len(captions)} captions for a batch of {x.shape[0]} images")
            projected = self.text_projection(self.text_encoder(captions).to(token))
            tokens = torch.cat([token, projected], dim=1)
        elif texts is not None and any(texts):
            raise CTFMError("this denoiser was built without a text encoder, so it cannot take captions")
        return self.unet(x, timesteps=timesteps, context=tokens, class_labels=token[:, 0])


def diffusion_unet(spatial_dims: int, preset: str = "small", **overrides: Any) -> WindowConditionedUNet:
    """The denoiser of a named preset (see :data:`PRESETS`) for ``spatial_dims`` 2 or 3.

    Args:
        spatial_dims: 2 for slices ``(B, 1, H, W)``, 3 for volumes ``(B, 1, D, H, W)``.
        preset: ``"lctfound"`` (LCTfound's 2D model size), ``"small"`` or ``"tiny"`` (these two train on a CPU).
        **overrides: :class:`WindowConditionedUNet` arguments replacing the preset's, e.g. ``text_encoder``.

    Returns:
        The window-conditioned denoiser; every spatial size of its input must be a multiple of its
        ``downsampling``.

    Raises:
        CTFMError: an unknown preset or ``spatial_dims``.
    """
    if preset not in PRESETS:
        raise CTFMError(f"unknown diffusion preset {preset!r}; known: {', '.join(PRESETS)}")
    return WindowConditionedUNet(spatial_dims=spatial_dims, **{**PRESETS[preset], **overrides})
