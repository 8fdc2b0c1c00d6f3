"""Copying tensors into a network strictly, and refusing damaged weights: what every weight format's loader shares.

:mod:`ctfm.hub.loading` (safetensors) and :mod:`ctfm.hub.fmcib` (FMCIB's torch files) both end here, so neither
imports the other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from ctfm.errors import ModelLoadError

_LISTED_KEYS = 10


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, assign: bool = False
) -> nn.Module:
    """Copy ``state`` into ``model``; on any difference raise ``ModelLoadError`` naming the keys.

    A prefix shared by every key of ``state`` that ends where a model key begins (``network.``, ``model.``) is
    dropped first. Tensors are cast to the model's dtypes. ``assign=True`` (for a model built on the meta device)
    gives the model copies of the tensors instead of copying into its existing ones.
    """
    expected = model.state_dict()
    state = _strip_prefix(dict(state), expected.keys())
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{key} {tuple(state[key].shape)} (model {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {listing(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        ]
        raise ModelLoadError(f"{source}: weights do not match {type(model).__name__}; " + "; ".join(problems))
    # Adopted tensors are copied: safetensors maps the file, and a model must not change when the file does.
    model.load_state_dict({k: state[k].to(v.dtype, copy=assign) for k, v in expected.items()}, assign=assign)
    return model


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or inf."""
    return [
        key
        for key, value in state.items()
        if value.is_floating_point() and not value.is_meta and not bool(torch.isfinite(value).all())
    ]


def refuse_nonfinite(state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ``ModelLoadError`` naming the tensors of ``state`` that hold NaN or inf: such weights are damaged."""
    bad = nonfinite_tensors(state)
    if bad:
        raise ModelLoadError(
            f"{source}: {len(bad)} of {len(state)} tensors hold NaN or inf values ({listing(bad)}); "
            "the weights are damaged, e.g. by a training run that diverged"
        )


def _strip_prefix(state: dict[str, torch.Tensor], expected: Collection[str]) -> dict[str, torch.Tensor]:
    if not state or not expected or state.keys() & expected:
        return state
    anchor = next(iter(expected))
    for key in state:
        if key.endswith("." + anchor):
            prefix = key[: -len(anchor)]
            if all(k.startswith(prefix) for k in state):
                return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def listing(keys: Sequence[str]) -> str:
    more = f" ... and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
    return ", ".join(keys[:_LISTED_KEYS]) + more
