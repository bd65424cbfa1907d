"""Checkpoints: every tensor of a :class:`TrainState`, written atomically, read with weights_only."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from featgs.atomic import atomic_write_bytes
from featgs.errors import FeatgsError
from featgs.train.trainer import TrainState

FORMAT = 1


def save_checkpoint(path: Path, state: TrainState) -> None:
    payload = {
        "format": FORMAT,
        "step": state.step,
        "params": {k: v.detach() for k, v in state.params.items()},
        "optimizers": {k: o.state_dict() for k, o in state.optimizers.items()},
        "strategy_state": {k: v for k, v in state.strategy_state.items() if v is not None},
        "decoder": None if state.decoder is None else {k: v.detach() for k, v in state.decoder.items()},
        "decoder_optimizer": None if state.decoder_optimizer is None else state.decoder_optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    device = next(iter(state.params.values())).device
    if device.type == "cuda":  # densification draws its random numbers on the parameters' device
        payload["cuda_rng"] = torch.cuda.get_rng_state(device)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, state: TrainState) -> TrainState:
    """Fill ``state`` (built for the same config) from ``path``; returns it."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FeatgsError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise FeatgsError(f"{path}: not a readable featgs checkpoint ({e.__class__.__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise FeatgsError(f"{path}: not a featgs checkpoint of format {FORMAT}")
    if set(ck["params"]) != set(state.params):
        raise FeatgsError(f"{path}: checkpoint holds {sorted(ck['params'])}, the run expects {sorted(state.params)}")
    device = next(iter(state.params.values())).device
    for k, v in ck["params"].items():
        state.params[k] = torch.nn.Parameter(v.to(device))
    for k, opt in state.optimizers.items():
        opt.param_groups[0]["params"] = [state.params[k]]
        opt.load_state_dict(ck["optimizers"][k])
    state.strategy_state.update({k: v.to(device) if torch.is_tensor(v) else v for k, v in ck["strategy_state"].items()})
    if state.decoder is not None and ck["decoder"] is not None:
        for k, v in ck["decoder"].items():
            state.decoder[k].data.copy_(v)
        state.decoder_optimizer.load_state_dict(ck["decoder_optimizer"])
    torch.set_rng_state(ck["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in ck:
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    state.step = int(ck["step"])
    return state
