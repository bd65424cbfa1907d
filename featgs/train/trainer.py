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
from gsplat.strategy import DefaultStrategy
from torch import Tensor
from tqdm.auto import tqdm

from featgs.camera import Camera
from featgs.distributed import SINGLE, Ranks
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
        agreement: with several ranks, the last check that every rank holds rank 0's
            Gaussians (:func:`sync_from_main`); not checkpointed.
    """

    step: int
    params: torch.nn.ParameterDict
    optimizers: Dict[str, torch.optim.Optimizer]
    strategy_state: dict
    decoder: Optional[torch.nn.ParameterDict] = None
    decoder_optimizer: Optional[torch.optim.Optimizer] = None
    log: List[dict] = field(default_factory=list)
    agreement: Optional[dict] = None

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


def make_strategy(config: TrainConfig, ranks: Ranks = SINGLE):
    """gsplat's densification strategy for ``config``; the default one gathers its statistics
    over every image of a step, on every rank (:class:`DataParallelDefaultStrategy`)."""
    from featgs.train.mcmc import CPUFriendlyMCMCStrategy

    stop = int(config.iters * config.refine_stop_fraction)
    if config.strategy == "mcmc":
        # MCMC decides by opacities (the same on every rank) and draws from the global RNG,
        # seeded alike on every rank: nothing to gather.
        return CPUFriendlyMCMCStrategy(cap_max=config.cap_max, refine_start_iter=config.refine_start,
                                       refine_stop_iter=stop, refine_every=config.refine_every, verbose=False)
    return DataParallelDefaultStrategy(
        grow_grad2d=config.grow_grad2d,
        refine_start_iter=config.refine_start,
        refine_stop_iter=stop,
        refine_every=config.refine_every,
        reset_every=config.reset_every,
        verbose=False,
        ranks=ranks,
    )


@dataclass
class DataParallelDefaultStrategy(DefaultStrategy):
    """gsplat's ``DefaultStrategy`` whose statistics cover the whole global batch of a step.

    ``step_post_backward`` takes the infos of every image this rank rendered in the step (a
    list; one dict is one image). gsplat's own ``_update_state`` turns each into this step's
    increments of the per-Gaussian screen-gradient sum, visibility count (and max radius);
    those are summed (max for radii) over the ranks by one all-reduce before they join the
    running state. So every rank holds the same statistics, and the clone/split/prune
    decisions that gsplat then takes from them are the same on every rank: the statistics of
    one process that rendered every image of the batch.

    It also resets the opacities every ``reset_every`` steps while refining, which gsplat
    1.5.3's own test (``step % self.reset_every == 0 & step > 0``: ``&`` binds first, so it
    reads ``... == 0 > 0``) never does; 3DGS relies on that reset to clear floaters.
    """

    ranks: Ranks = SINGLE

    def step_post_backward(self, params, optimizers, state, step: int, info, packed: bool = False) -> None:
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            from gsplat.strategy.ops import reset_opa

            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    def _update_state(self, params, state, info, packed: bool = False) -> None:
        infos = info if isinstance(info, list) else [info]
        n = len(params["means"])
        device = params["means"].device
        step = {"grad2d": torch.zeros(n, device=device), "count": torch.zeros(n, device=device),
                "scene_scale": state["scene_scale"]}
        if self.refine_scale2d_stop_iter > 0:
            step["radii"] = torch.zeros(n, device=device)
        for one in infos:
            super()._update_state(params, step, one, packed=packed)
        self.ranks.all_reduce_([step["grad2d"], step["count"]])
        for key in ("grad2d", "count"):
            state[key] = step[key] if state[key] is None else state[key] + step[key]
        if self.refine_scale2d_stop_iter > 0:
            self.ranks.all_reduce_([step["radii"]], op="max")
            state["radii"] = step["radii"] if state["radii"] is None else torch.maximum(state["radii"], step["radii"])


def init_strategy_state(strategy, extent: float) -> dict:
    """The strategy's running state; only the default strategy scales thresholds by the scene."""
    if isinstance(strategy, DefaultStrategy):
        return strategy.initialize_state(scene_scale=extent)
    return strategy.initialize_state()


def epoch_order(n: int, epoch: int, seed: int) -> Tensor:
    """The view order of one epoch: a function of (seed, epoch) alone, so resuming needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def view_of(slot: int, n: int, seed: int) -> int:
    """The view of image ``slot`` of the stream of training images (epoch after epoch, each in
    :func:`epoch_order`); step s of a global batch B trains on slots s*B .. s*B + B - 1."""
    epoch, k = divmod(slot, n)
    return int(epoch_order(n, epoch, seed)[k])


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
    ranks: Ranks = SINGLE,
    images_per_rank: int = 1,
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
            only with finite parameters (on rank 0 only).
        log: receives a dict of loss, PSNR, Gaussian count, step times (last and slowest of
            the last 10 steps, seconds) and rendered pairs every 10 steps; a slowest step over
            ``SLOW_STEP`` times the median is flagged ("slow": true) and reported (rank 0 only).
        ranks, images_per_rank: data parallelism. A step trains on a global batch of
            ``world_size * images_per_rank`` images (one per rank by default: with W ranks, W
            images per step), the next slots of one stream of views (:func:`view_of`) that
            every rank derives from the seed alone; each rank renders its own images, the
            gradients of all are averaged by one bucketed all-reduce, the densification
            statistics are summed over every image (:class:`DataParallelDefaultStrategy`),
            and rank 0's Gaussians are broadcast after each refinement as a safety net: every
            rank holds the same Gaussians. The loss and PSNR logged are the batch's means.
    Raises:
        Interrupted: after Ctrl-C, once the checkpoint is written.
        Diverged: a non-finite loss or parameter; the last checkpoint is left as it was.
        LostContact: another rank died or stopped answering (featgs.distributed).
    """
    joint = teacher_maps is not None
    n_views = len(cameras)
    per = int(images_per_rank)
    if per < 1:
        raise FeatgsError(f"images per rank must be >= 1, got {per}")
    batch = ranks.world_size * per  # the global batch: images per step over all ranks
    first = ranks.rank * per  # this rank's first slot in a step's batch
    main = ranks.is_main
    lr0 = config.lr_means * extent
    bar = tqdm(total=config.iters, initial=state.step, desc=f"train ({config.mode})", unit="step",
               disable=not (progress and main), dynamic_ncols=True)
    t_start = time.perf_counter()
    window: List[float] = []  # step times since the last log record
    typical: List[float] = []  # one step time per log record, for the median
    if ranks.many:  # every rank starts from rank 0's Gaussians (a fresh run or a resumed one)
        state.agreement = sync_from_main(state, ranks)
    stop_everywhere = False
    with _StopFlag() as flag:
        while state.step < config.iters:
            if stop_everywhere or (flag.stop and not ranks.many):
                check_finite(state)
                if main:
                    save_checkpoint(state)
                bar.close()
                raise Interrupted(state.step)
            t_step = time.perf_counter()
            step = state.step
            frac = step / max(1, config.iters)
            for group in state.optimizers["means"].param_groups:
                group["lr"] = lr0 * (0.01 ** frac)
            sh_degree = min(config.sh_degree, step // max(1, config.sh_degree_interval))
            logging = (step + 1) % 10 == 0 or step + 1 == config.iters
            g = state.gaussians()
            infos: List[dict] = []
            sums = [0.0, 0.0, 0.0, 0.0]  # loss, PSNR, feature L1 over this rank's images; non-finite losses
            out = None
            for m in range(per):
                slot = step * batch + first + m
                i = view_of(slot, n_views, config.seed)
                bg = step_background(background, slot, config.seed, images[i].device)
                target = over(images[i], bg)
                out = render(g, cameras[i], sh_degree=sh_degree, features=joint, background=bg)
                loss = photometric_loss(out.rgb, target, config.ssim_weight)
                feat_loss = None
                if joint:
                    feat_loss = feature_l1(out.features, teacher_maps(i))
                    loss = loss + config.feature_weight * feat_loss
                if not bool(torch.isfinite(loss)):
                    if not ranks.many:
                        bar.close()
                        raise Diverged(step, "the loss")
                    sums[3] += 1  # the other ranks must hear of it before anyone stops
                    continue
                strategy.step_pre_backward(state.params, state.optimizers, state.strategy_state, step, out.info)
                (loss / per if per > 1 else loss).backward()
                # gsplat undoes the 1/n of a loss averaged over n cameras: n_cameras = per
                infos.append(dict(out.info, n_cameras=per) if per > 1 else out.info)
                sums[0] += float(loss.detach())
                sums[1] += psnr(out.rgb, target) if logging else 0.0
                sums[2] += float(feat_loss.detach()) if feat_loss is not None else 0.0
            if ranks.many:
                sums, stop_everywhere = _all_reduce_step(state, ranks, sums, flag.stop)
                if sums[3] > 0:
                    bar.close()
                    raise Diverged(step, f"the loss (of {int(sums[3])} of the step's {batch} images)")
            for opt in state.optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            if state.decoder_optimizer is not None:
                state.decoder_optimizer.step()
                state.decoder_optimizer.zero_grad(set_to_none=True)
            _post_backward(strategy, state, step, infos if per > 1 or ranks.many else infos[0],
                           lr=state.optimizers["means"].param_groups[0]["lr"])
            if ranks.many and step % config.refine_every == 0:  # after a refinement: rank 0's Gaussians everywhere
                state.agreement = sync_from_main(state, ranks)
            state.step += 1
            window.append(time.perf_counter() - t_step)
            if logging:
                rec = {"step": state.step, "loss": sums[0] / batch, "psnr": sums[1] / batch,
                       "num_gaussians": len(state.params["means"]), "sh_degree": sh_degree,
                       "seconds": round(time.perf_counter() - t_start, 3),
                       "step_seconds": round(window[-1], 4), "max_step_seconds": round(max(window), 4),
                       "pairs": int(out.info.get("num_pairs") or 0) if out is not None else 0}
                window.clear()
                typical.append(rec["step_seconds"])
                median = sorted(typical)[len(typical) // 2]
                if len(typical) >= 5 and rec["max_step_seconds"] > SLOW_STEP * median:
                    rec["slow"] = True
                    if main:
                        bar.write(f"featgs: warning: a step before {state.step} took {rec['max_step_seconds']:.2f} s, "
                                  f"{rec['max_step_seconds'] / median:.0f}x the median ({rec['pairs']} tile-Gaussian pairs)")
                if joint:
                    rec["feature_l1"] = sums[2] / batch
                if ranks.many:
                    rec["ranks"] = ranks.world_size
                    rec["rank_difference"] = state.agreement["max_difference"]
                if main:
                    log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}", gaussians=rec["num_gaussians"],
                                s_per_step=f"{rec['step_seconds']:.3f}")
            bar.update(1)
            if state.step % config.checkpoint_every == 0 and state.step < config.iters:
                check_finite(state)
                if main:
                    save_checkpoint(state)
    bar.close()
    if ranks.many:
        state.agreement = sync_from_main(state, ranks)
    check_finite(state)
    if main:
        save_checkpoint(state)
    return state


def _trained(state: TrainState) -> List[Tensor]:
    """Every tensor the optimisers update: the Gaussians' parameters and the decoder's."""
    params = list(state.params.values())
    if state.decoder is not None:
        params += list(state.decoder.values())
    return params


def _all_reduce_step(state: TrainState, ranks: Ranks, sums: List[float], stop: bool) -> Tuple[List[float], bool]:
    """Average the gradients over the ranks (one bucketed all-reduce, with this step's loss sums
    and flags riding along); returns the summed ``sums`` and whether any rank asked to stop.

    A parameter without a gradient on a rank counts as a zero gradient there; one without a
    gradient on every rank keeps none (Adam then skips it, as it would in one process).
    """
    params = _trained(state)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = params[0].device
    extra = torch.tensor([*sums, float(stop), *[float(p.grad is not None) for p in params]],
                         dtype=grads[0].dtype, device=device)
    ranks.all_reduce_(grads + [extra])
    values = extra.tolist()
    for p, grad, had in zip(params, grads, values[5:]):
        p.grad = grad.div_(ranks.world_size) if had > 0 else None
    return values[:4], values[4] > 0


@torch.no_grad()
def sync_from_main(state: TrainState, ranks: Ranks) -> dict:
    """Make every rank hold rank 0's Gaussians, optimiser moments and densification
    statistics (one bucketed broadcast); returns how far they were apart before it:
    {"gaussians": count on each rank, "max_difference": largest parameter difference}.

    With identical inputs every rank computes the same thing, so the difference is 0; this is
    the safety net (and the check) for a backend whose reductions are not bitwise identical.

    Raises:
        FeatgsError: the ranks hold different numbers of Gaussians (a broadcast cannot mend that).
    """
    counts = ranks.all_gather_objects(len(state.params["means"]))
    if len(set(counts)) > 1:
        raise FeatgsError(f"rank {ranks.rank}: the ranks hold different numbers of Gaussians {counts}: their "
                          "densification decisions differed (a bug); continue with --resume")
    params = _trained(state)
    before = [p.detach().clone() for p in params]
    tensors = [p.data for p in params]
    optimizers = list(state.optimizers.values()) + ([state.decoder_optimizer] if state.decoder_optimizer else [])
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                tensors += [v for _, v in sorted(opt.state.get(p, {}).items()) if torch.is_tensor(v)]
    tensors += [v for _, v in sorted(state.strategy_state.items()) if torch.is_tensor(v)]
    ranks.broadcast_(tensors)
    diff = torch.zeros(1, dtype=torch.float64)
    for a, b in zip(before, params):
        if a.numel():
            diff = torch.maximum(diff, (a - b.detach()).abs().max().double().cpu())
    ranks.all_reduce_([diff], op="max")
    return {"gaussians": counts, "max_difference": float(diff)}


def _post_backward(strategy, state: TrainState, step: int, info, lr: float) -> None:
    """gsplat's post-backward step; ``info``: one image's render info, or a list of the infos
    of every image this rank rendered in the step (see :class:`DataParallelDefaultStrategy`)."""
    from gsplat.strategy import MCMCStrategy

    if isinstance(strategy, MCMCStrategy):
        strategy.step_post_backward(state.params, state.optimizers, state.strategy_state, step, info, lr=lr)
    else:
        strategy.step_post_backward(state.params, state.optimizers, state.strategy_state, step, info, packed=False)
