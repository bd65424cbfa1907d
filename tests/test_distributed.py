"""Several processes, one job (featgs.distributed): the sharded teacher extraction, the
distributed solve and data-parallel training give what one process gives, and a rank that
dies stops the others at once with one line, leaving a run that --resume continues.

Every multi-process test starts 2 gloo ranks on this machine, one thread each: either with
``torchrun`` itself, or as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in each process's environment; :func:`launch`), which lets a test run its own
code in the ranks (``_job_*`` below) and kill one of them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from torch import Tensor

from builders import make_tabletop_data
from featgs.data.procedural import MakeConfig
from featgs.distributed import SINGLE, Ranks, process_group
from featgs.errors import FeatgsError
from featgs.teachers.base import Teacher

TESTS = Path(__file__).resolve().parent
WAIT = 300  # seconds a multi-process step may take at most on a slow, busy CI machine


# -- launching ranks --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    return dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def launch(argv: List[str], logs: Path, world: int = 2) -> List[subprocess.Popen]:
    """``world`` processes of ``python argv`` as torchrun starts them; output in logs/rank{r}.{out,err}."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for r in range(world):
        out, err = open(logs / f"rank{r}.out", "w"), open(logs / f"rank{r}.err", "w")
        procs.append(subprocess.Popen([sys.executable, *argv], env=rank_env(r, world, port), stdout=out, stderr=err))
        out.close()
        err.close()
    return procs


def job(name: str, *args: str) -> List[str]:
    """The argv running ``_job_<name>(*args)`` of this module in a rank."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_distributed as t; sys.exit(t._child())"
    return ["-c", code, name, *args]


def featgs(*args: str) -> List[str]:
    return ["-m", "featgs", *map(str, args)]


def wait_all(procs: List[subprocess.Popen], timeout: float = WAIT) -> List[int]:
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    finally:
        for p in procs:  # only the processes this test started
            if p.poll() is None:
                p.kill()
                p.wait()


def read(logs: Path, rank: int, stream: str) -> str:
    return (logs / f"rank{rank}.{stream}").read_text()


def torchrun(args: List[str], nproc: int = 2, timeout: float = WAIT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _child() -> int:
    """Entry point of a :func:`job` rank."""
    torch.set_num_threads(1)
    name, args = sys.argv[1], sys.argv[2:]
    return globals()[f"_job_{name}"](*args) or 0


# -- one process: the helpers are no-ops ---------------------------------------------------------
def test_a_plain_process_is_one_rank_without_a_process_group():
    import torch.distributed as dist

    with process_group(torch.device("cpu"), env={}) as ranks:
        assert ranks == Ranks() and ranks.is_main and not ranks.distributed and not ranks.many
        assert not (dist.is_available() and dist.is_initialized())
        t = torch.arange(3.0)
        ranks.all_reduce_([t])
        ranks.broadcast_([t])
        assert torch.equal(t, torch.arange(3.0))
        assert ranks.settle(lambda: 5) == 5 and ranks.on_main(lambda: 6) == 6
        assert ranks.all_gather_objects("a") == ["a"] and ranks.shard(list("abc")) == list("abc")
        assert ranks.unshard(list("abc")) == list("abc") and ranks.sum_objects(2.5) == 2.5
    with pytest.raises(FeatgsError, match="boom"):
        SINGLE.settle(lambda: (_ for _ in ()).throw(FeatgsError("boom")))


def test_shares_cover_every_item_once():
    shares = [Ranks(rank=r, world_size=3).shard(list(range(10))) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert all(Ranks(rank=r, world_size=3).owns(i) == (i in shares[r]) for r in range(3) for i in range(10))


@pytest.mark.parametrize("env, message", [
    ({"RANK": "one", "WORLD_SIZE": "2"}, "expected integers"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "0 <= RANK < WORLD_SIZE"),
])
def test_a_malformed_launch_is_one_line(env, message):
    with pytest.raises(FeatgsError, match=message) as raised:
        with process_group(torch.device("cpu"), env=env):
            pass
    assert "\n" not in str(raised.value)


def test_unshard_puts_every_ranks_share_back_in_order():
    class Gathered(Ranks):  # rank 0 of 2, as if the other rank held views 1 and 3
        def all_gather_objects(self, obj):
            return [obj, ["v1", "v3"]]

    ranks = Gathered(rank=0, world_size=2)
    assert ranks.shard(["v0", "v1", "v2", "v3", "v4"]) == ["v0", "v2", "v4"]
    assert ranks.unshard(["v0", "v2", "v4"]) == ["v0", "v1", "v2", "v3", "v4"]


def test_buckets_keep_dtypes_apart_and_bound_their_size(monkeypatch):
    import featgs.distributed as d

    monkeypatch.setattr(d, "BUCKET_BYTES", 64)
    tensors = [torch.zeros(8), torch.zeros(8), torch.zeros(3, dtype=torch.float64), torch.zeros(40), torch.zeros(2)]
    buckets = list(d._buckets(tensors))
    assert [[t.numel() for t in b] for b in buckets] == [[8, 8], [40], [2], [3]]
    flat = d._flatten(buckets[0])
    flat += 1
    d._unflatten_into(flat, buckets[0])
    assert all(torch.equal(t, torch.ones(8)) for t in buckets[0])


def test_the_slots_of_a_global_batch_follow_the_one_process_stream():
    from featgs.train.trainer import epoch_order, view_of

    n, seed, batch = 5, 3, 2
    stream = torch.cat([epoch_order(n, e, seed) for e in range(4)]).tolist()
    by_step = [view_of(step * batch + r, n, seed) for step in range(10) for r in range(batch)]
    assert by_step == stream[:20]


# -- the solve ---------------------------------------------------------------------------------------
def _solve_problem():
    """60 Gaussians seen by 6 cameras, a random 6-dim teacher: CG stops unconverged (20 of 60)."""
    from featgs.camera import Camera, intrinsics_from_fov, look_at
    from featgs.gaussians import Gaussians

    g = torch.Generator().manual_seed(0)
    n, D, (w, h) = 60, 6, (16, 12)
    gaussians = Gaussians.create((torch.rand(n, 3, generator=g) - 0.5) * 1.2, scales=torch.full((n,), 0.12), opacity=0.5)
    cams = [Camera(look_at((3.0 * math.sin(a), -3.0 * math.cos(a), 0.6 * math.cos(3 * a)), (0.0, 0.0, 0.0)),
                   intrinsics_from_fov(w, h, math.radians(45)), w, h) for a in torch.linspace(-1.5, 1.5, 6).tolist()]
    maps = [torch.randn(D, h, w, generator=g) + torch.linspace(0, 1, D)[:, None, None] for _ in cams]
    return gaussians, cams, maps, [(h, w)] * len(cams)


def _job_solve(out: str) -> None:

    with process_group(torch.device("cpu")) as ranks:
        _solve_in(ranks, out)


def _solve_in(ranks: Ranks, out: str) -> None:
    from featgs.train.solve import SolveConfig, solve_features

    gaussians, cams, maps, sizes = _solve_problem()
    read: List[int] = []

    def loader(i: int):
        return lambda: read.append(i) or maps[i]

    result = {"read": read}
    for name, dim in (("full", None), ("pca", 3)):
        r = solve_features(gaussians, cams, [loader(i) for i in range(len(cams))], sizes, SolveConfig(), feature_dim=dim,
                           progress=False, ranks=ranks)
        result[name] = {"features": r.features, "stats": r.stats,
                        "decoder": None if r.decoder is None else (r.decoder.weight, r.decoder.bias)}
    torch.save(result, Path(out) / f"solve{ranks.rank}.pt")


def _decoded(r: dict) -> Tensor:
    weight, bias = r["decoder"]
    return r["features"] @ weight.T + bias


@pytest.mark.slow
def test_the_distributed_solve_equals_the_single_process_one(tmp_path):
    from featgs.train.solve import SolveConfig, solve_features

    assert wait_all(launch(job("solve", str(tmp_path)), tmp_path / "logs")) == [0, 0], read(tmp_path / "logs", 0, "err")
    gaussians, cams, maps, sizes = _solve_problem()
    loaders = [lambda m=m: m for m in maps]
    alone = {"full": solve_features(gaussians, cams, loaders, sizes, SolveConfig(), progress=False),
             "pca": solve_features(gaussians, cams, loaders, sizes, SolveConfig(), feature_dim=3, progress=False)}
    ranks = [torch.load(tmp_path / f"solve{r}.pt", weights_only=True) for r in range(2)]
    for name in ("full", "pca"):
        ref = alone[name].features
        assert alone[name].stats["cg_iterations"] == 20 and alone[name].stats["relative_residual"] > 1e-6
        for r in ranks:
            assert torch.equal(r[name]["features"], ranks[0][name]["features"])  # the same on every rank
            err = float((r[name]["features"] - ref).norm() / ref.norm())
            assert err < 1e-4, (name, err)
            assert r[name]["stats"]["cg_iterations"] == alone[name].stats["cg_iterations"]
            assert r[name]["stats"]["unseen_gaussians"] == alone[name].stats["unseen_gaussians"]
            assert r[name]["stats"]["topk_mass_kept"] == pytest.approx(alone[name].stats["topk_mass_kept"], rel=1e-9)
    ref = alone["pca"].features @ alone["pca"].decoder.weight.T + alone["pca"].decoder.bias
    assert float((_decoded(ranks[1]["pca"]) - ref).norm() / ref.norm()) < 1e-4
    # each teacher map is read by the rank that owns its view (i % 2), never by the other
    for rank, r in enumerate(ranks):
        assert set(r["read"]) == {i for i in range(len(cams)) if i % 2 == rank}, (rank, r["read"])


# -- the teacher extraction ------------------------------------------------------------------------------
class _Recording(Teacher):
    """A teacher (half-resolution maps derived from the image) that records what it encodes;
    with ``die_after``, the process dies (as by kill -9) once it has written that many maps."""

    name = "fake"
    language_aligned = False
    dim = 3

    def __init__(self, die_after: int = -1):
        self.encoded: List[str] = []
        self.die_after = die_after

    @property
    def model_id(self) -> str:
        return "fake@1"

    def resolution_for(self, width: int, height: int) -> tuple:
        return height // 2, width // 2

    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        if len(self.encoded) == self.die_after:
            os._exit(9)  # the previous map is written: die between two maps
        self.encoded.append(f"{image[0, 0, 0]:.2f}")
        pooled = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], 2)[0]
        return torch.stack([pooled.mean(0) * (k + 1) for k in range(self.dim)])


def _items(n: int = 7):
    from featgs.teachers import CacheItem

    def image(i: int):
        return lambda: torch.full((8, 6, 3), i / 10) + torch.linspace(0, 0.05, 6)[None, :, None]

    return [CacheItem(f"view_{i:03d}", image(i)) for i in range(n)]


def _job_extract(root: str, die_after: str = "-1") -> int:
    from featgs.teachers import FeatureCache

    with process_group(torch.device("cpu")) as ranks:
        teacher = _Recording(die_after=int(die_after) if ranks.rank == 1 else -1)
        try:
            computed = FeatureCache(root, "fake").ensure(teacher, _items(), progress=False, ranks=ranks)
        except FeatgsError as e:  # as the CLI reports it
            print(f"featgs: error: {e}", file=sys.stderr)
            return 2
    (Path(root) / f"rank{ranks.rank}.json").write_text(json.dumps({"computed": computed, "encoded": teacher.encoded}))
    return 0


@pytest.mark.slow
def test_sharded_extraction_writes_each_view_once_and_equals_one_process(tmp_path):
    from featgs.teachers import FeatureCache

    shared = tmp_path / "shared"
    assert wait_all(launch(job("extract", str(shared)), tmp_path / "logs")) == [0, 0], read(tmp_path / "logs", 1, "err")
    records = [json.loads((shared / f"rank{r}.json").read_text()) for r in range(2)]
    names = [item.name for item in _items()]
    encoded = [x for r in records for x in r["encoded"]]
    assert sorted(encoded) == sorted(f"{i / 10:.2f}" for i in range(7))  # every view exactly once
    assert records[0]["encoded"] == [f"{i / 10:.2f}" for i in range(0, 7, 2)]  # view i on rank i % 2
    assert records[0]["computed"] == records[1]["computed"] == 7

    alone = FeatureCache(tmp_path / "alone", "fake")
    assert alone.ensure(_Recording(), _items(), progress=False) == 7
    cache = FeatureCache(shared, "fake")
    assert cache.meta == alone.meta and sorted(cache.meta["images"]) == names
    for name in names:
        assert torch.equal(cache.load(name), alone.load(name))
    assert sorted(p.name for p in cache.folder.iterdir()) == sorted(p.name for p in alone.folder.iterdir())


@pytest.mark.slow
def test_a_rank_that_dies_mid_extraction_leaves_a_cache_that_resumes(tmp_path):
    from featgs.teachers import FeatureCache

    root = tmp_path / "data"
    codes = wait_all(launch(job("extract", str(root), "1"), tmp_path / "logs"), timeout=120)
    err = read(tmp_path / "logs", 0, "err").strip()
    assert codes[1] == 9 and codes[0] == 2, (codes, err)
    assert len(err.splitlines()) == 1 and "rank 0: lost contact with the other ranks" in err, err
    cache = FeatureCache(root, "fake")
    assert cache.meta is None  # incomplete: no meta.json
    written = sorted(p.name for p in cache.folder.glob("*.safetensors"))
    assert "view_001.safetensors" in written and "view_003.safetensors" not in written  # rank 1 died after one
    teacher = _Recording()
    assert cache.ensure(teacher, _items(), progress=False) == 7 - len(written)  # only the missing maps
    assert sorted(cache.meta["images"]) == [item.name for item in _items()]


# -- training ----------------------------------------------------------------------------------------
SMALL = MakeConfig(size=24, views=16, test_views=3, points=300)
TRAIN_ARGS = ["--iters", "200", "--refine-start", "30", "--refine-every", "30", "--checkpoint-every", "1000",
              "--feature-dim", "16", "--threads", "1", "--quiet"]


def _job_train(snapshots: str, *argv: str) -> int:
    """``featgs train`` in this rank, keeping its own parameters as they are when the ranks are
    compared (before rank 0's are broadcast): the check does not trust featgs's own."""
    import featgs.train.trainer as trainer
    from featgs.cli import main

    real = trainer.sync_from_main
    seen = []

    def spy(state, r):
        seen.append({k: v.detach().clone() for k, v in state.params.items()})
        return real(state, r)

    trainer.sync_from_main = spy
    code = main(list(argv))  # featgs's own launch detection joins the ranks
    torch.save(seen, Path(snapshots) / f"params{os.environ['RANK']}.pt")
    return code


def _cache_maps(data: Path) -> dict:
    from featgs.teachers import FeatureCache

    cache = FeatureCache(data, "labels")
    return {name: cache.load(name) for name in cache.meta["images"]}


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_same_batch(tmp_path):
    from featgs.train import TrainConfig
    from featgs.train.evaluate import evaluate_run
    from featgs.train.run import train_run

    data = make_tabletop_data(tmp_path / "data", SMALL)
    data1 = tmp_path / "data1"
    shutil.copytree(data, data1)
    logs = tmp_path / "logs"
    procs = launch(job("train", str(tmp_path), "train", str(data), "--out", str(tmp_path / "two"), *TRAIN_ARGS), logs)
    assert wait_all(procs) == [0, 0], read(logs, 0, "err") + read(logs, 1, "err")
    out0, out1 = read(logs, 0, "out"), read(logs, 1, "out")
    assert out1 == "" and out0.count("on 2 ranks (gloo)") == 1  # rank 0 alone reports

    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert (info["world_size"], info["backend"], info["images_per_step"], info["status"]) == (2, "gloo", 2, "done")
    # the ranks' own parameters at every comparison (after each refinement and at the end)
    seen = [torch.load(tmp_path / f"params{r}.pt", weights_only=True) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) >= 7  # the start, 5 refinements, the end
    for a, b in zip(*seen):
        for k in a:
            assert a[k].shape == b[k].shape and float((a[k] - b[k]).abs().max()) <= 1e-6, k
    assert len(seen[0][-1]["means"]) == info["num_gaussians"] and info["rank_agreement"]["gaussians"] == [info["num_gaussians"]] * 2
    log = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 200 and max(r["rank_difference"] for r in log) <= 1e-6

    # one process, two images per step, on a copy of the dataset (its own, unsharded cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train_run(data1, tmp_path / "one", TrainConfig(iters=200, refine_start=30, refine_every=30,
                                                             checkpoint_every=1000, feature_dim=8),
                        progress=False, images_per_rank=2)
    finally:
        torch.set_num_threads(threads)
    assert (one["world_size"], one["backend"], one["images_per_step"]) == (1, None, 2)
    # `featgs eval` on 2 ranks (3 test views: 2 and 1) scores as one process does
    sharded = torchrun(featgs("eval", tmp_path / "two", "--json", "--no-pictures"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    lines = sharded.stdout.strip().splitlines()
    assert len(lines) == 1, sharded.stdout  # rank 0 alone prints
    m2_sharded = json.loads(lines[0])
    m1 = evaluate_run(tmp_path / "one", pictures=False, progress=False)
    m2 = evaluate_run(tmp_path / "two", pictures=False, progress=False)
    for key in ("psnr", "ssim", "feature_cosine", "miou", "accuracy"):
        assert m2_sharded[key] == pytest.approx(m2[key], rel=1e-9, abs=1e-12), key
    assert abs(m1["psnr"] - m2["psnr"]) <= 0.5, (m1["psnr"], m2["psnr"])
    assert m2["psnr"] > 20
    sharded, alone = _cache_maps(data), _cache_maps(data1)  # the extraction, sharded and not
    assert sorted(sharded) == sorted(alone) and len(sharded) == 19
    assert all(torch.equal(sharded[k], alone[k]) for k in alone)


# -- a rank that dies --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_rank_stops_the_others_with_one_line_and_resume_continues(tabletop_data, tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    args = ["--iters", "120", "--refine-start", "30", "--refine-every", "30", "--checkpoint-every", "20",
            "--feature-dim", "16", "--threads", "1", "--quiet"]
    procs = launch(featgs("train", tabletop_data, "--out", run, *args), logs)
    try:
        deadline = time.time() + WAIT
        log = run / "log.jsonl"
        while time.time() < deadline and not ((run / "checkpoint.pt").exists() and log.exists()
                                              and log.read_text().count("\n") >= 3):
            assert procs[0].poll() is None, read(logs, 0, "err")
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        code = procs[0].wait(timeout=90)
        seconds = time.time() - t0
    finally:
        wait_all(procs, timeout=5)
    err = read(logs, 0, "err").strip()
    assert code == 2 and seconds < 60, (code, seconds, err)
    assert len(err.splitlines()) == 1 and err.startswith("featgs: error: rank 0: lost contact with the other ranks"), err
    assert "--resume" in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["stopped_at"] < 120

    done = torchrun(featgs("train", tabletop_data, "--out", run, "--resume", *args))
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["steps"], info["world_size"]) == ("done", 120, 2)
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 120


def _job_stall(seconds: str) -> int:
    """Rank 1 stops answering (alive, but never joins the next collective); rank 0 reports."""
    from datetime import timedelta

    with process_group(torch.device("cpu"), timeout=timedelta(seconds=float(seconds))) as ranks:
        t = torch.ones(3)
        ranks.all_reduce_([t])
        if ranks.rank == 1:
            time.sleep(20)
            return 0
        t0 = time.time()
        try:
            ranks.all_reduce_([t])
        except FeatgsError as e:
            print(f"{time.time() - t0:.1f} {e}")
            return 2
    return 0


@pytest.mark.slow
def test_a_rank_that_stops_answering_is_given_up_after_the_timeout(tmp_path):
    procs = launch(job("stall", "3"), tmp_path / "logs")
    try:
        code = procs[0].wait(timeout=60)
    finally:
        for p in procs:  # rank 1 is still asleep: ended here
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds, message = read(tmp_path / "logs", 0, "out").split(" ", 1)
    assert code == 2 and 2.5 < float(seconds) < 20, (code, seconds)
    assert message.startswith("rank 0: lost contact with the other ranks") and "within 3 s" in message
