"""featgs.train.backproject and `featgs train --mode backproject`: each Gaussian's feature is the
blend-weight-weighted average of the teacher features it covers, checked against dense linear
algebra on a scene small enough to write down, and end to end as a training mode."""

from __future__ import annotations

import json

import pytest
import torch

from featgs.cli import main
from featgs.data import load_scene
from featgs.gaussians import Gaussians
from featgs.render import render
from featgs.run import Run
from featgs.teachers import FeatureCache
from featgs.train.backproject import backproject_features
from featgs.train.solve import SolveConfig, solve_features
from builders import small_solve_scene


def _weights(gaussians: Gaussians, cams) -> torch.Tensor:
    """[P, N] every contributor's blend weight, read off one-hot feature renders (row p of W is
    pixel p's rendered feature when feature i = e_i), independently of the top-K bookkeeping."""
    onehot = gaussians.with_features(torch.eye(len(gaussians)))
    return torch.cat([render(onehot, c, backend="torch").features.reshape(-1, len(gaussians)) for c in cams]).double()


def _maps(cams, D: int):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(D, c.height, c.width, generator=g) for c in cams]


def _flat(maps) -> torch.Tensor:
    return torch.cat([m.reshape(m.shape[0], -1).T for m in maps]).double()


def test_backproject_is_the_blend_weighted_average_of_the_teacher():
    gaussians, cams = small_solve_scene()
    maps = _maps(cams, D=5)
    res = backproject_features(gaussians, cams, [lambda m=m: m for m in maps], [m.shape[-2:] for m in maps],
                               SolveConfig(top_k=16), progress=False)
    W, T = _weights(gaussians, cams), _flat(maps)
    seen = W.sum(0)
    expected = torch.where(seen[:, None] > 0, (W.T @ T) / seen.clamp_min(1e-30)[:, None], torch.zeros(1, dtype=W.dtype))
    assert seen[-1] == 0 and res.features[-1].abs().max() == 0  # unseen: zero
    torch.testing.assert_close(res.features.double(), expected, rtol=1e-5, atol=1e-6)
    assert res.stats["cg_iterations"] == 0 and res.stats["method"] == "backproject" and res.decoder is None
    # it is the solve's starting point (with the plain weights): the solve with no iterations
    zero = solve_features(gaussians, cams, [lambda m=m: m for m in maps], [m.shape[-2:] for m in maps],
                          SolveConfig(top_k=16, cg_iters=0, match_alpha=False), progress=False)
    assert torch.equal(zero.features, res.features)


def test_backproject_in_a_pca_basis_is_the_projection_of_the_full_average():
    """Averaging is linear and the weights of a seen Gaussian sum to one, so averaging the
    PCA coordinates gives the coordinates of the full average: decoder(F_d) = mean + P P^T (F - mean)."""
    gaussians, cams = small_solve_scene()
    maps = _maps(cams, D=6)
    loaders, sizes = [lambda m=m: m for m in maps], [m.shape[-2:] for m in maps]
    full = backproject_features(gaussians, cams, loaders, sizes, progress=False).features
    low = backproject_features(gaussians, cams, loaders, sizes, feature_dim=2, progress=False)
    P, mean = low.decoder.weight, low.decoder.bias  # [6, 2], [6]
    seen = full.abs().sum(1) > 0
    torch.testing.assert_close(low.decoder(low.features)[seen], (mean + (full - mean) @ P @ P.T)[seen],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_train_mode_backproject_end_to_end(tabletop_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tabletop_data), "--out", str(out), "--mode", "backproject", "--iters", "40",
                 "--refine-start", "10", "--refine-every", "10", "--checkpoint-every", "1000", "--feature-dim", "16",
                 "--quiet"]) == 0
    assert "backproject: blend-weighted average of the teacher features, top-16 keeps" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["mode"] == "backproject" and info["status"] == "done"
    assert info["distill"]["method"] == "backproject" and info["distill"]["cg_iterations"] == 0
    # the stored features are the weighted average on the run's own geometry
    run = Run.open(out)
    g = run.gaussians()
    scene = load_scene(tabletop_data)
    cache = FeatureCache(tabletop_data, "labels")
    names = [v.name for v in scene.train]
    again = backproject_features(g, [v.camera for v in scene.train], [lambda n=n: cache.load(n) for n in names],
                                 [tuple(cache.meta["images"][n]) for n in names], SolveConfig(), feature_dim=16,
                                 progress=False)
    torch.testing.assert_close(g.features, again.features, rtol=1e-4, atol=1e-5)
    assert main(["eval", str(out), "--json", "--no-pictures", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 < metrics["miou"] <= 1.0 and 0.0 < metrics["accuracy"] <= 1.0
