"""gsplat's MCMC densification, made to run on the CPU too.

gsplat's ``MCMCStrategy`` is plain PyTorch except for two CUDA kernels: the relocation of
opacities/scales (3DGS-MCMC, eq. 9) and the covariance used to shape position noise. On CUDA
tensors we defer to gsplat; on the CPU the same formulas run here in PyTorch.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from gsplat.strategy import MCMCStrategy
from gsplat.strategy.ops import _multinomial_sample, _update_param_with_optimizer
from torch import Tensor

from featgs.rotations import quat_to_rotmat


def relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """Opacity and scale of each of ``ratios`` copies of a Gaussian that together look like it.

    Args:
        opacities [M], scales [M, 3], ratios [M] (copies, >= 1), binoms [n_max, n_max].
    """
    n_max = binoms.shape[0]
    r = ratios.clamp(1, n_max).long()
    new_op = 1.0 - (1.0 - opacities) ** (1.0 / r)
    i = torch.arange(1, n_max + 1, device=opacities.device)  # copies 1..n_max
    k = torch.arange(n_max, device=opacities.device)
    # term[i, k] = C(i-1, k) (-1)^k / sqrt(k+1), for k < i
    term = binoms * ((-1.0) ** k) / torch.sqrt(k + 1.0)
    term = torch.where(k[None, :] < i[:, None], term, torch.zeros_like(term))
    powers = new_op[:, None] ** (k + 1.0)[None, :]  # [M, n_max]
    per_i = powers @ term.T  # [M, n_max]: inner sum for each i
    upto = torch.cumsum(per_i, dim=1).gather(1, (r - 1)[:, None]).squeeze(1)
    return new_op, scales * (opacities / upto)[:, None]


class CPUFriendlyMCMCStrategy(MCMCStrategy):
    """``MCMCStrategy`` whose CPU path needs no CUDA kernels."""

    def step_post_backward(self, params, optimizers, state: Dict[str, Any], step: int, info: Dict[str, Any], lr: float):
        if params["means"].is_cuda:
            return super().step_post_backward(params, optimizers, state, step, info, lr)
        binoms = state["binoms"].to(params["means"].device)
        with torch.no_grad():
            if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
                dead = torch.sigmoid(params["opacities"].flatten()) <= self.min_opacity
                if dead.any():
                    self._move(params, optimizers, binoms, dead)
                n_new = max(0, min(self.cap_max, int(1.05 * len(params["means"]))) - len(params["means"]))
                if n_new:
                    self._add(params, optimizers, binoms, n_new)
            self._noise(params, lr * self.noise_lr)

    def _split_copies(self, params, binoms: Tensor, sampled: Tensor):
        eps = torch.finfo(torch.float32).eps
        opac = torch.sigmoid(params["opacities"])
        new_op, new_sc = relocation(opac[sampled], torch.exp(params["scales"])[sampled],
                                    torch.bincount(sampled)[sampled] + 1, binoms)
        return torch.clamp(new_op, max=1.0 - eps, min=self.min_opacity), new_sc

    def _move(self, params, optimizers, binoms: Tensor, dead: Tensor) -> None:
        dead_ids = dead.nonzero().squeeze(1)
        alive_ids = (~dead).nonzero().squeeze(1)
        if alive_ids.numel() == 0:
            return
        sampled = alive_ids[_multinomial_sample(torch.sigmoid(params["opacities"])[alive_ids].flatten(), len(dead_ids))]
        new_op, new_sc = self._split_copies(params, binoms, sampled)

        def param_fn(name: str, p: Tensor) -> Tensor:
            _write_split(name, p, sampled, new_op, new_sc)
            p[dead_ids] = p[sampled]
            return torch.nn.Parameter(p, requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            v[sampled] = 0
            return v

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)

    def _add(self, params, optimizers, binoms: Tensor, n: int) -> None:
        sampled = _multinomial_sample(torch.sigmoid(params["opacities"]).flatten(), n)
        new_op, new_sc = self._split_copies(params, binoms, sampled)

        def param_fn(name: str, p: Tensor) -> Tensor:
            _write_split(name, p, sampled, new_op, new_sc)
            return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            return torch.cat([v, v.new_zeros((len(sampled), *v.shape[1:]))])

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)

    @staticmethod
    def _noise(params, scaler: float) -> None:
        """Push nearly transparent Gaussians around, shaped by their covariance."""
        opac = torch.sigmoid(params["opacities"].flatten())
        R = quat_to_rotmat(params["quats"])
        M = R * torch.exp(params["scales"])[:, None, :]
        cov = M @ M.transpose(1, 2)
        gate = 1.0 / (1.0 + torch.exp(-100.0 * ((1.0 - opac) - 0.995)))
        noise = torch.randn_like(params["means"]) * gate[:, None] * scaler
        params["means"].add_(torch.einsum("bij,bj->bi", cov, noise))


def _write_split(name: str, p: Tensor, sampled: Tensor, opacities: Tensor, scales: Tensor) -> None:
    """Give the Gaussians ``sampled`` the opacities and scales of their split copies (in place,
    in parameter space: logits and logs); other parameters are left as they are."""
    if name == "opacities":
        p[sampled] = torch.logit(opacities)
    elif name == "scales":
        p[sampled] = torch.log(scales)
