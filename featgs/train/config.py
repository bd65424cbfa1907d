"""Training configuration (surfaced one flag per field by ``featgs train``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from featgs.configargs import check_ranges
from featgs.teachers.options import TeacherOptions
from featgs.train.solve import SolveConfig


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    mode: str = _f("solve", "feature distillation: 'solve' (geometry first, then a sparse least-squares solve), "
                   "'joint' (Feature 3DGS: feature L1 on every step) or 'backproject' (geometry first, then each "
                   "Gaussian's feature is the blend-weight-weighted average of the teacher features it covers: the "
                   "solve's start, no CG iterations)", choices=["solve", "joint", "backproject"])
    teacher: str = _f("labels", "feature teacher(s): 'labels' (text embeddings of per-pixel labels), 'sam', "
                      "'clip', several joined by commas (e.g. sam,clip), or 'none'")
    iters: int = _f(2000, "optimisation steps of the geometry (and, in joint mode, the features)", min=1)
    feature_dim: Optional[int] = _f(None, "store d-dim features per teacher and a linear decoder to the teacher's D "
                                    "(default: D, no decoder)", min=1)
    downscale: float = _f(1.0, "divide image sizes by this factor (cached)", min=1.0)
    strategy: str = _f("default", "densification: gsplat's 'default' (clone/split/prune) or 'mcmc'",
                       choices=["default", "mcmc"])
    sh_degree: int = _f(3, "highest spherical-harmonics degree, reached by a ramp", min=0, max=3)
    sh_degree_interval: int = _f(400, "steps between SH degree increases", min=1)
    init: str = _f("auto", "initial Gaussians: 'points' (the dataset's point cloud), 'random' (placed by what the cameras "
                   "tell: in the volume an object-centric rig looks at, else in the cameras' frusta) or 'auto' "
                   "(points when the dataset has them, else random)", choices=["auto", "points", "random"])
    max_init_points: int = _f(60_000, "subsample the initial point cloud to at most this many points", min=1)
    random_init_points: int = _f(20_000, "how many random initial points (--init random, or auto without a point "
                                 "cloud); more make a denser fog that takes longer to clear", min=1)
    background: str = _f("auto", "colour behind the Gaussians in training: 'white', 'black', 'random' (a new colour "
                         "every step) or 'auto' (random for transparent RGBA datasets such as NeRF-synthetic, else "
                         "black); transparent datasets are scored over white", choices=["auto", "white", "black", "random"])
    init_opacity: float = _f(0.1, "opacity of the initial Gaussians (3DGS uses 0.1)", above=0.0, below=1.0)
    lr_means: float = _f(1.6e-4, "position learning rate (times the scene extent), decays to 1/100", min=0.0)
    lr_scales: float = _f(5e-3, "log-scale learning rate", min=0.0)
    lr_quats: float = _f(1e-3, "rotation learning rate", min=0.0)
    lr_opacities: float = _f(5e-2, "opacity-logit learning rate", min=0.0)
    lr_sh0: float = _f(2.5e-3, "base colour learning rate", min=0.0)
    lr_shN: float = _f(2.5e-3 / 20, "higher SH learning rate", min=0.0)
    lr_features: float = _f(2.5e-3, "feature learning rate (joint mode)", min=0.0)
    lr_decoder: float = _f(1e-3, "decoder learning rate (joint mode)", min=0.0)
    ssim_weight: float = _f(0.2, "weight of 1 - SSIM in the colour loss (the rest is L1)", min=0.0, max=1.0)
    feature_weight: float = _f(1.0, "weight of the feature L1 loss (joint mode)", min=0.0)
    refine_start: int = _f(100, "first densification step", min=0)
    refine_stop_fraction: float = _f(0.6, "stop densifying after this fraction of the steps", min=0.0, max=1.0)
    refine_every: int = _f(100, "steps between densifications", min=1)
    reset_every: int = _f(3000, "steps between opacity resets (default strategy)", min=1)
    grow_grad2d: float = _f(2e-4, "screen-space gradient threshold for cloning/splitting", above=0.0)
    cap_max: int = _f(300_000, "most Gaussians (mcmc strategy)", min=1)
    checkpoint_every: int = _f(500, "steps between checkpoints", min=1)
    seed: int = _f(0, "random seed (data order, initialisation, densification)", min=0)
    device: str = _f("auto", "where to train: 'cpu', 'cuda', or 'auto' (cuda when available)",
                     choices=["auto", "cpu", "cuda"])
    solve: SolveConfig = field(default_factory=SolveConfig)
    teacher_options: TeacherOptions = field(default_factory=TeacherOptions)

    def __post_init__(self) -> None:
        check_ranges(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        solve = SolveConfig(**d.pop("solve", {}))
        options = TeacherOptions.from_dict(d.pop("teacher_options", {}))
        return cls(**d, solve=solve, teacher_options=options)
