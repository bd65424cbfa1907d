"""The training loop: geometry and colour (3DGS), features jointly or by the solve.

State is explicit: :class:`TrainState` holds every tensor that a resumed run needs (parameters,
optimiser moments, densification statistics, RNG), and is what checkpoints store.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, LinearDecoder
from featgs.render import render
from featgs.data.images import over
from featgs.train.background import step_background
from featgs.train.config import TrainConfig
from featgs.train.losses import feature_l1, photometric_loss, psnr

SLOW_STEP = 10.0  # a step this many times slower than the median is reported

PARAM_LRS = {
    "means": "lr_means",
    "scales": "lr_scales",
    "quats": "lr_quats",
    "opacities": "lr_opacities",
    "sh0": "lr_sh0",
    "shN": "lr_shN",
    "features": "lr_features",
}


@dataclass
class TrainState:
    """Everything that changes during training.

    Attributes:
        step: steps done.
        params: name -> [N, ...] parameters (the keys of ``Gaussians.PARAM_NAMES``; no
            "features" in solve mode, whose features come after training).
        optimizers: one Adam per parameter (gsplat's strategies expect this layout).
        strategy_state: the densification strategy's running statistics.
        decoder: joint mode with d < D: {"weight" [D, d], "bias" [D]} and its optimiser.
    """

    step: int
    params: torch.nn.ParameterDict
    optimizers: Dict[str, torch.optim.Optimizer]
    strategy_state: dict
    decoder: Optional[torch.nn.ParameterDict] = None
    decoder_optimizer: Optional[torch.optim.Optimizer] = None
    log: List[dict] = field(default_factory=list)

    def gaussians(self) -> Gaussians:
        p = self.params
        feats = p["features"] if "features" in p else p["means"].new_zeros(len(p["means"]), 0)
        dec = None
        if self.decoder is not None:
            dec = LinearDecoder(self.decoder["weight"], self.decoder["bias"])
        return Gaussians(means=p["means"], scales=p["scales"], quats=p["quats"], opacities=p["opacities"],
                         sh0=p["sh0"], shN=p["shN"], features=feats, decoder=dec)


def new_state(init: Gaussians, config: TrainConfig, extent: float, feature_dim: int, teacher_dim: int) -> TrainState:
    """Parameters and optimisers for a fresh run; joint mode adds features (and a decoder)."""
    tensors = {name: getattr(init, name) for name in Gaussians.PARAM_NAMES if name != "features"}
    if config.mode == "joint" and feature_dim > 0:
        tensors["features"] = torch.zeros(len(init), feature_dim, device=init.device)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone().float()) for k, v in tensors.items()})
    optimizers = {}
    for name, p in params.items():
        lr = getattr(config, PARAM_LRS[name]) * (extent if name == "means" else 1.0)
        # gsplat's trainers use eps=1e-15: tiny gradients of barely visible Gaussians still move them.
        optimizers[name] = torch.optim.Adam([{"params": [p], "lr": lr, "name": name}], eps=1e-15)
    decoder = dec_opt = None
    if config.mode == "joint" and 0 < feature_dim < teacher_dim:
        gen = torch.Generator().manual_seed(config.seed + 17)
        w = torch.randn(teacher_dim, feature_dim, generator=gen) / math.sqrt(feature_dim)
        decoder = torch.nn.ParameterDict({"weight": torch.nn.Parameter(w.to(init.device)),
                                          "bias": torch.nn.Parameter(torch.zeros(teacher_dim, device=init.device))})
        dec_opt = torch.optim.Adam(decoder.parameters(), lr=config.lr_decoder)
    return TrainState(step=0, params=params, optimizers=optimizers, strategy_state={}, decoder=decoder, decoder_optimizer=dec_opt)


def make_strategy(config: TrainConfig):
    from gsplat.strategy import DefaultStrategy

    from featgs.train.mcmc import CPUFriendlyMCMCStrategy

    stop = int(config.iters * config.refine_stop_fraction)
    if config.strategy == "mcmc":
        return CPUFriendlyMCMCStrategy(cap_max=config.cap_max, refine_start_iter=config.refine_start,
                                       refine_stop_iter=stop, refine_every=config.refine_every, verbose=False)
    return DefaultStrategy(
        grow_grad2d=config.grow_grad2d,
        refine_start_iter=config.refine_start,
        refine_stop_iter=stop,
        refine_every=config.refine_every,
        reset_every=config.reset_every,
        verbose=False,
    )


def init_strategy_state(strategy, extent: float) -> dict:
    """The strategy's running state; only the default strategy scales thresholds by the scene."""
    from gsplat.strategy import DefaultStrategy

    if isinstance(strategy, DefaultStrategy):
        return strategy.initialize_state(scene_scale=extent)
    return strategy.initialize_state()


def epoch_order(n: int, epoch: int, seed: int) -> Tensor:
    """The view order of one epoch: a function of (seed, epoch) alone, so resuming needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class _StopFlag:
    """Turns Ctrl-C into a flag checked between steps, so a checkpoint is never half a step."""

    def __init__(self) -> None:
        self.stop = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us anyway
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Diverged(FeatgsError):
    """Training produced a non-finite loss or parameter at ``step``; nothing of that step was saved."""

    def __init__(self, step: int, what: str):
        super().__init__(f"training diverged at step {step}: {what} is not finite; stopped without saving it "
                         "(the last checkpoint is kept; lower the learning rates, e.g. --lr-means, or change --seed)")
        self.step = step


def check_finite(state: "TrainState") -> None:
    """Raise :class:`Diverged` if any parameter holds NaN or Inf."""
    for name, p in state.params.items():
        if not bool(torch.isfinite(p).all()):
            raise Diverged(state.step, f"parameter {name!r}")


class Interrupted(Exception):
    """Training stopped by the user after saving a checkpoint at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


def train_loop(
    state: TrainState,
    strategy,
    cameras: List[Camera],
    images: List[Tensor],
    config: TrainConfig,
    *,
    extent: float,
    background: str = "black",
    teacher_maps: Optional[Callable[[int], Sequence[Tuple[Tuple[int, int], Tensor]]]] = None,
    save_checkpoint: Callable[[TrainState], None],
    log: Callable[[dict], None],
    progress: bool = True,
) -> TrainState:
    """Optimise from ``state.step`` to ``config.iters``.

    Args:
        cameras, images: training views, images [H, W, 3] or, for transparent datasets,
            [H, W, 4] (straight alpha) in 0..1.
        background: "white", "black" or "random" (see :mod:`featgs.train.background`): the
            colour every step renders over and composites its target over.
        teacher_maps: joint mode: view index -> [(channels [start, end) of the rendered
            features, that teacher's map [D_t, h, w])], one pair per teacher.
        save_checkpoint: called every ``checkpoint_every`` steps, at the end, and on Ctrl-C,
            only with finite parameters.
        log: receives a dict of loss, PSNR, Gaussian count, step times (last and slowest of
            the last 10 steps, seconds) and rendered pairs every 10 steps; a slowest step over
            ``SLOW_STEP`` times the median is flagged ("slow": true) and reported.
    Raises:
        Interrupted: after Ctrl-C, once the checkpoint is written.
        Diverged: a non-finite loss or parameter; the last checkpoint is left as it was.
    """
    joint = teacher_maps is not None
    n_views = len(cameras)
    lr0 = config.lr_means * extent
    bar = tqdm(total=config.iters, initial=state.step, desc=f"train ({config.mode})", unit="step",
               disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter()
    window: List[float] = []  # step times since the last log record
    typical: List[float] = []  # one step time per log record, for the median
    with _StopFlag() as flag:
        while state.step < config.iters:
            if flag.stop:
                check_finite(state)
                save_checkpoint(state)
                bar.close()
                raise Interrupted(state.step)
            t_step = time.perf_counter()
            step = state.step
            epoch, k = divmod(step, n_views)
            i = int(epoch_order(n_views, epoch, config.seed)[k])
            frac = step / max(1, config.iters)
            for group in state.optimizers["means"].param_groups:
                group["lr"] = lr0 * (0.01 ** frac)
            sh_degree = min(config.sh_degree, step // max(1, config.sh_degree_interval))
            bg = step_background(background, step, config.seed, images[i].device)
            target = over(images[i], bg)
            g = state.gaussians()
            out = render(g, cameras[i], sh_degree=sh_degree, features=joint, background=bg)
            loss = photometric_loss(out.rgb, target, config.ssim_weight)
            feat_loss = None
            if joint:
                feat_loss = feature_l1(out.features, teacher_maps(i))
                loss = loss + config.feature_weight * feat_loss
            if not bool(torch.isfinite(loss)):
                bar.close()
                raise Diverged(step, "the loss")
            strategy.step_pre_backward(state.params, state.optimizers, state.strategy_state, step, out.info)
            loss.backward()
            for opt in state.optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            if state.decoder_optimizer is not None:
                state.decoder_optimizer.step()
                state.decoder_optimizer.zero_grad(set_to_none=True)
            _post_backward(strategy, state, step, out.info, lr=state.optimizers["means"].param_groups[0]["lr"])
            state.step += 1
            window.append(time.perf_counter() - t_step)
            if state.step % 10 == 0 or state.step == config.iters:
                rec = {"step": state.step, "loss": float(loss.detach()), "psnr": psnr(out.rgb, target),
                       "num_gaussians": len(state.params["means"]), "sh_degree": sh_degree,
                       "seconds": round(time.perf_counter() - t_start, 3),
                       "step_seconds": round(window[-1], 4), "max_step_seconds": round(max(window), 4),
                       "pairs": int(out.info.get("num_pairs") or 0)}
                window.clear()
                typical.append(rec["step_seconds"])
                median = sorted(typical)[len(typical) // 2]
                if len(typical) >= 5 and rec["max_step_seconds"] > SLOW_STEP * median:
                    rec["slow"] = True
                    bar.write(f"featgs: warning: a step before {state.step} took {rec['max_step_seconds']:.2f} s, "
                              f"{rec['max_step_seconds'] / median:.0f}x the median ({rec['pairs']} tile-Gaussian pairs)")
                if feat_loss is not None:
                    rec["feature_l1"] = float(feat_loss.detach())
                log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}", gaussians=rec["num_gaussians"],
                                s_per_step=f"{rec['step_seconds']:.3f}")
            bar.update(1)
            if state.step % config.checkpoint_every == 0 and state.step < config.iters:
                check_finite(state)
                save_checkpoint(state)
    bar.close()
    check_finite(state)
    save_checkpoint(state)
    return state


def _post_backward(strategy, state: TrainState, step: int, info: dict, lr: float) -> None:
    from gsplat.strategy import MCMCStrategy

    if isinstance(strategy, MCMCStrategy):
        strategy.step_post_backward(state.params, state.optimizers, state.strategy_state, step, info, lr=lr)
    else:
        strategy.step_post_backward(state.params, state.optimizers, state.strategy_state, step, info, packed=False)
