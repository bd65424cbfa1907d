"""Hardening of what serves a run (issue "Hardening"): renders too large for memory are refused
before they allocate, an edited PLY sent back carries its own meaning, JSON answers never hold
NaN, a training view that sees nothing does not stop the solve, a field on an accelerator
crosses to numpy only through the CPU, and the viewer listens where it is told or says why not.

Servers run on 127.0.0.1 (or ::1) and are stopped by their context managers; every wait on a
server or a subprocess is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import math
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

import featgs.render.torch_backend as torch_backend
import featgs.server
import featgs.server.app as server_app
from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.cli import main
from featgs.commands import serve as serve_command
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, load_ply
from featgs.gaussians.ply import decoder_path
from featgs.gaussians.random import random_gaussians
from featgs.query import Delete, FeatureField, PromptConfig, QueryConfig, RenderTooLarge, Selection
from featgs.query import field as field_module
from featgs.render import estimate_pairs, render
from featgs.server import FieldServer
from featgs.train.solve import SolveConfig, solve_features
from featgs.viewer import ViewerApp, ViewerConfig, frames
from featgs.viewer.app import check_address
from builders import copy_run, has_ipv6


@pytest.fixture(scope="module")
def run(tabletop_run, tmp_path_factory) -> Path:
    return copy_run(tabletop_run, tmp_path_factory.mktemp("hardening-serve") / "run")


@pytest.fixture(scope="module")
def field(run) -> FeatureField:
    return FeatureField.load(run, device="cpu")


def call(server: FieldServer, method: str, path: str, body=None):
    """(status, content type, payload: JSON parsed strictly (no NaN, no Infinity) or bytes)."""
    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=60)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    payload = resp.read()
    kind = resp.getheader("Content-Type") or ""
    conn.close()
    if kind.startswith("application/json"):
        payload = json.loads(payload, parse_constant=lambda name: pytest.fail(f"{name} in a JSON answer"))
    return resp.status, kind, payload


def pinhole(cam: Camera) -> dict:
    return {"width": cam.width, "height": cam.height, "K": cam.K.tolist(), "camtoworld": cam.camtoworld.tolist()}


# -- 6: a render too large for memory is refused before it allocates -----------------------------

def _large_gaussians(field: FeatureField, limit: int) -> FeatureField:
    """``field`` with every Gaussian e^2 times larger and a render limit of ``limit`` pairs."""
    g = field.gaussians
    return dataclasses.replace(field, gaussians=dataclasses.replace(g, scales=g.scales + 2.0), max_render_pairs=limit)


def test_the_pair_estimate_is_the_renderers_own_count():
    g = random_gaussians(2000, feature_dim=4)
    cam = Camera(look_at((0.0, -3.0, 0.5), (0.0, 0.0, 0.0)), intrinsics_from_fov(96, 64, 1.0), 96, 64)
    for scale in (0.0, 2.0):  # as they are, and so large that each covers most of the view
        big = dataclasses.replace(g, scales=g.scales + scale)
        assert estimate_pairs(big, cam) == render(big, cam).info["num_pairs"] > 0
    away = Camera(look_at((0.0, 0.0, -50.0), (0.0, 0.0, -100.0)), intrinsics_from_fov(96, 64, 1.0), 96, 64)
    assert estimate_pairs(g, away) == 0 and estimate_pairs(g.select(torch.zeros(len(g), dtype=torch.bool)), cam) == 0


def test_a_view_over_the_pair_limit_is_refused_before_anything_is_binned(field, monkeypatch):
    large = _large_gaussians(field, limit=1_000_000)
    cam = field.camera(0).resized(256, 256)  # 1.5M pairs of these Gaussians
    small = field.camera(0)  # 32 x 32: 31k pairs
    assert large.check_render_size(small) <= 1_000_000
    assert large.render(small).shape == (32, 32, 3)

    def binned(*args, **kwargs):
        raise AssertionError("a render over the limit was binned")

    monkeypatch.setattr(torch_backend, "bin_gaussians", binned)
    sel = Selection.from_ids(field.gaussians.means, torch.arange(10))
    for name, op in [("rgb", lambda: large.render(cam)), ("features", lambda: large.render(cam, "features")),
                     ("relevancy", lambda: large.render(cam, "relevancy", text="table")),
                     ("segmentation", lambda: large.render(cam, "segmentation")),
                     ("selection", lambda: large.render(cam, "selection", selection=sel)),
                     ("segment", lambda: large.segment(cam)), ("mask", lambda: large.mask(cam, sel)),
                     ("relevancy_map", lambda: large.relevancy_map(cam, "table")),
                     ("lift", lambda: large.lift(cam, torch.ones(256, 256, dtype=torch.bool))),
                     ("prompt", lambda: large.prompt(cam, points=[[128, 128]]))]:
        with pytest.raises(RenderTooLarge, match=r"256x256 view .* 1\.\dM \(tile, Gaussian\) pairs, about 0\.\d GB, "
                                                 r"over the limit of 1M \(max_render_pairs; featgs serve --max-render-pairs\)"):
            op()
        assert isinstance(RenderTooLarge("x"), FeatgsError), name
    unlimited = dataclasses.replace(large, max_render_pairs=None)
    assert unlimited.check_render_size(cam) == 0  # no limit: not even estimated


def test_the_server_answers_422_for_a_view_over_its_limit_and_serves_on(field):
    large = _large_gaussians(field, limit=1_000_000)
    big = pinhole(field.camera(0).resized(256, 256))
    with FieldServer(large, ("127.0.0.1", 0), quiet=True).start() as srv:
        for path, body in [("/render", {"camera": big, "mode": "rgb"}),
                           ("/segment", {"camera": big}),
                           ("/prompt", {"camera": big, "points": [[128.0, 128.0]]}),
                           ("/render", {"camera": big, "mode": "relevancy", "text": "table"})]:
            status, kind, out = call(srv, "POST", path, body)
            assert status == 422 and kind.startswith("application/json"), (path, status, out)
            assert out["status"] == 422 and "--max-render-pairs" in out["error"] and "\n" not in out["error"]
        status, kind, _ = call(srv, "POST", "/render", {"camera": {"view": 0}})
        assert status == 200 and kind == "image/png"
        status, _, doc = call(srv, "GET", "/openapi.json")
        assert "422" in doc["paths"]["/render"]["post"]["responses"]


def test_serve_takes_the_limit_as_an_option(run, capsys, monkeypatch):
    assert serve_command.MAX_RENDER_PAIRS == field_module.MAX_RENDER_PAIRS  # written twice: help stays light
    assert main(["serve", str(run), "--max-render-pairs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["featgs: error: --max-render-pairs must be at least 1, got 0"]
    served = []

    def no_socket(field, *args, **kwargs):  # the field serve would serve, and no server
        served.append(field)
        raise OSError("not here")

    monkeypatch.setattr(featgs.server, "FieldServer", no_socket)
    assert main(["serve", str(run)]) == 2 and main(["serve", str(run), "--max-render-pairs", "5000"]) == 2
    assert [f.max_render_pairs for f in served] == [field_module.MAX_RENDER_PAIRS, 5000]
    with pytest.raises(FeatgsError, match="max_render_pairs"):
        FeatureField.load(run, device="cpu", max_render_pairs=0)
    assert FeatureField.load(run, device="cpu", max_render_pairs=123).max_render_pairs == 123
    assert FeatureField.load(run, device="cpu").max_render_pairs is None  # programs and the shell: no limit


# -- 7: a training view that sees no Gaussian ------------------------------------------------------

def test_a_training_view_that_sees_nothing_is_skipped_by_the_solve():
    n, (w, h) = 7, (10, 8)
    means = (torch.rand(n, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.8
    g = Gaussians.create(means, scales=torch.full((n,), 0.25), opacity=0.6)
    K = intrinsics_from_fov(w, h, math.radians(50))
    sees = [Camera(look_at((3.0 * math.sin(a), -3.0 * math.cos(a), 0.3), (0.0, 0.0, 0.0)), K, w, h)
            for a in (0.0, 0.8)]
    away = Camera(look_at((0.0, -3.0, 0.3), (0.0, -10.0, 0.3)), K, w, h)
    maps = [torch.randn(3, h, w, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def never_read():
        raise AssertionError("the teacher map of a view that sees nothing was read")

    config = SolveConfig(cg_iters=100, tol=1e-6)
    both = solve_features(g, [sees[0], away, sees[1]], [lambda: maps[0], never_read, lambda: maps[2]], [(h, w)] * 3,
                          config, progress=False)
    without = solve_features(g, [sees[0], sees[1]], [lambda: maps[0], lambda: maps[2]], [(h, w)] * 2, config,
                             progress=False)
    assert both.stats["views_seeing_nothing"] == 1 and without.stats["views_seeing_nothing"] == 0
    torch.testing.assert_close(both.features, without.features, atol=1e-5, rtol=1e-4)
    # no view sees anything: zeros, a finite residual, no error (also through the PCA decoder)
    none = solve_features(g, [away], [lambda: maps[1]], [(h, w)], config, feature_dim=2, progress=False)
    assert torch.equal(none.features, torch.zeros(n, 2)) and math.isfinite(none.stats["relative_residual"])
    assert none.stats["views_seeing_nothing"] == 1 and none.stats["unseen_gaussians"] == n


# -- 8: /edit without a name returns a PLY that needs no decoder -----------------------------------

def test_an_edit_without_a_name_returns_one_self_contained_ply(field, tmp_path, monkeypatch):
    ids = list(range(0, field.num_gaussians, 7))
    with FieldServer(field, ("127.0.0.1", 0), quiet=True).start() as srv:
        status, kind, body = call(srv, "POST", "/edit", {"selection": {"ids": ids}, "op": "delete"})
        _, _, doc = call(srv, "GET", "/openapi.json")
        monkeypatch.setattr(server_app, "MAX_PLY_ANSWER", 1 << 20)  # this scene decoded: ~7 MB
        too_large = call(srv, "POST", "/edit", {"selection": {"ids": ids}, "op": "delete"})
    assert too_large[0] == 422 and "pass name to save it under edits/" in too_large[2]["error"]
    assert status == 200 and kind == "application/octet-stream"
    assert "decoded" in doc["paths"]["/edit"]["post"]["description"]
    path = tmp_path / "edit.ply"
    path.write_bytes(body)
    got = load_ply(path)
    assert not decoder_path(path).exists() and got.decoder is None
    edited = field.edit(Selection.from_ids(field.gaussians.means, torch.tensor(ids)), Delete()).gaussians
    D = field.gaussians.output_feature_dim
    assert len(got) == len(edited) == field.num_gaussians - len(ids) and got.feature_dim == D > edited.feature_dim
    torch.testing.assert_close(got.features, edited.decoder(edited.features), atol=1e-5, rtol=1e-5)
    # what the returned file renders is what the field renders: the decoder is linear, so blending
    # decoded features gives the decoded blend, but for the bias where the view is not covered
    # (the field adds all of it, the blend alpha of it)
    cam = field.camera(1)
    mine, theirs = render(got, cam), render(edited, cam)
    uncovered = (1.0 - theirs.alpha) * edited.decoder.bias
    torch.testing.assert_close(mine.features, theirs.features - uncovered, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.rgb, theirs.rgb)


# -- 9: JSON answers never hold NaN ----------------------------------------------------------------

def test_a_query_whose_numbers_overflow_is_a_json_error_not_invalid_json(field):
    g = field.gaussians
    overflowing = dataclasses.replace(field, gaussians=dataclasses.replace(g, means=g.means * 1e38))
    for f, expected in ((field, 200), (overflowing, 422)):  # centroid: the mean of +-1e38s, NaN and inf
        with FieldServer(f, ("127.0.0.1", 0), quiet=True).start() as srv:
            status, kind, out = call(srv, "POST", "/query", {"text": "table", "clean": False})
            assert status == expected and kind.startswith("application/json"), out
            if status == 200:
                assert out["num_selected"] > 0 and all(math.isfinite(v) for v in out["centroid"])
            else:
                assert "NaN or infinity" in out["error"]
            status, _, health = call(srv, "GET", "/health")
            assert status == 200 and health["status"] == "ok"


# -- 11: a field on an accelerator -----------------------------------------------------------------
# There is no GPU here, so a stand-in: inside fake_accelerator(), tensors on the "meta" device hold
# real data (on the CPU, behind a wrapper), the code runs end to end as on a GPU, and a GPU's rules
# hold: an op mixing them with CPU tensors fails, and so does .numpy() until .cpu().

FAKE = torch.device("meta")
# what CUDA also allows across devices: CPU index tensors for a device tensor, and copies
_CROSS_DEVICE = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_",
                 "aten::_unsafe_index", "aten::_unsafe_index_put", "aten::copy_", "aten::_to_copy"}
_INDEXING = _CROSS_DEVICE - {"aten::copy_", "aten::_to_copy"}


def _on_fake(device) -> bool:
    return device is not None and torch.device(device).type == FAKE.type


class _OnDevice(torch.Tensor):
    """A tensor on the fake device: a wrapper around its CPU data."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(),
                                                storage_offset=data.storage_offset(), dtype=data.dtype,
                                                layout=data.layout, device=FAKE, requires_grad=data.requires_grad)
        r.cpu_data = data
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a fake-device tensor outside fake_accelerator()")


class _Device(TorchDispatchMode):
    """Every aten op runs on the CPU data; its results are on the fake device when an input was."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = func._schema.name
        on_device, on_cpu = [], []

        def unwrap(x):
            if isinstance(x, _OnDevice):
                on_device.append(x)
                return x.cpu_data
            if isinstance(x, torch.Tensor):
                if x.device.type == FAKE.type:
                    raise RuntimeError(f"{name} got a meta tensor without data: the stand-in missed its making")
                if x.dim() > 0:  # like CUDA, 0-dim CPU tensors mix with device ones
                    on_cpu.append(x)
            return x

        a, k = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        to_fake = _on_fake(k.get("device"))
        if to_fake:
            k["device"] = torch.device("cpu")
        if on_device and on_cpu and name not in _CROSS_DEVICE:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{FAKE} and cpu! ({name})")
        if name in _INDEXING and on_device and not isinstance(args[0], _OnDevice) and args[0].dim() > 0:
            raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
        out = func(*a, **k)
        if name == "aten::_local_scalar_dense":  # .item(), bool(), float()
            return out
        if name == "aten::_to_copy" and kwargs.get("device") is not None:
            wrap_all = to_fake  # .to(device) or .cpu()
        else:
            wrap_all = bool(on_device) or to_fake
        if not wrap_all:
            return out
        originals = {id(x.cpu_data): x for x in on_device}  # in-place ops give back their input

        def wrap(x):
            if not isinstance(x, torch.Tensor):
                return x
            return originals[id(x)] if id(x) in originals else _OnDevice(x)

        return tree_map(wrap, out)


class _Host(TorchFunctionMode):
    """What goes past aten: tensors made from Python data on the device (torch would make data-less
    meta tensors), and what Python may do with a GPU tensor: .tolist() yes, .numpy() no."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _on_fake(kwargs.get("device")) and func is not torch.Tensor.to:
            kwargs["device"] = "cpu"
            return func(*args, **kwargs).to(FAKE)
        if args and isinstance(args[0], _OnDevice):
            if func in (torch.Tensor.numpy, torch.Tensor.__array__):
                raise TypeError(f"can't convert {FAKE.type} device type tensor to numpy. Use Tensor.cpu() to copy "
                                "the tensor to host memory first.")
            if func is torch.Tensor.tolist:
                return args[0].cpu().tolist()
            if func is torch.Tensor.new_tensor:
                kwargs.setdefault("dtype", args[0].dtype)
                return torch.tensor(*args[1:], **kwargs).to(FAKE)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_accelerator():
    """The body runs with the stand-in device available; yields it. (Modes are per thread.)"""
    with _Host(), _Device():
        yield FAKE


def test_the_stand_in_accelerator_keeps_a_gpus_rules():
    with fake_accelerator() as dev:
        x = torch.arange(4.0).to(dev)
        y = torch.tensor([1.0, 2.0, 3.0, 4.0], device=dev) * 2 + x
        assert y.device == dev and y.sum().item() == 26.0 and y.tolist() == [2.0, 5.0, 8.0, 11.0]
        assert torch.equal(y.cpu(), torch.tensor([2.0, 5.0, 8.0, 11.0])) and type(y.cpu()) is torch.Tensor
        y[torch.tensor([0])] = 0.0  # CPU indices into a device tensor: allowed, as on CUDA
        assert y.cpu()[0] == 0 and bool((y > 1).any()) and y[y > 4].device == dev
        with pytest.raises(TypeError, match="numpy"):
            y.numpy()
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(y)
        with pytest.raises(RuntimeError, match="same device"):
            torch.cat([y, torch.ones(4)])
        with pytest.raises(RuntimeError, match="same device"):
            y + torch.ones(4)
        with pytest.raises(RuntimeError, match="indexed tensor"):
            torch.zeros(4)[torch.tensor([1]).to(dev)]
        assert (y + torch.tensor(1.0)).device == dev  # 0-dim CPU tensors mix, as on CUDA


def test_viewer_frames_and_field_operations_on_an_accelerator(field):
    """Every crossing from torch to numpy goes through the CPU, and CPU masks meet device tensors
    only after a move: no frame, render, query, prompt or edit fails on a GPU box."""
    field.query("table", config=QueryConfig(clean=False))  # text embeddings cached (on the CPU) beforehand
    cam = field.camera(0)
    no_clean = PromptConfig(clean=False)
    with fake_accelerator() as dev:
        on = dataclasses.replace(field, gaussians=field.gaussians.to(dev))
        assert on.gaussians.device == dev and on.gaussians.decoder.weight.device == dev
        sel = on.query("table", config=QueryConfig(clean=False))
        assert len(sel) and sel.ids.device.type == "cpu"
        relevancy = on.relevancy("table")
        assert relevancy.device == dev
        for mode in ("rgb", "features", "relevancy", "segmentation", "selection"):
            picture = on.render(cam, mode, text="table", selection=sel)
            assert picture.device.type == "cpu" and picture.shape == (32, 32, 3), mode
        mask, picked = on.prompt(cam, points=[[16.0, 20.0]], config=no_clean)
        box_mask, _ = on.prompt(cam, box=[4, 4, 28, 28], config=no_clean)
        assert np.asarray(mask).shape == np.asarray(box_mask).shape == (32, 32) and len(picked)
        assert on.segment(cam).device.type == "cpu" and on.mask(cam, sel).device.type == "cpu"
        assert on.lift(cam, mask).num_gaussians == on.num_gaussians
        colours = frames.FeatureColours(on.gaussians)
        overlay = frames.Overlay(selected=sel.mask(), relevancy=relevancy, relevancy_range=(0.5, 1.0),
                                 mask=np.asarray(mask))
        for mode in frames.MODES:  # the viewer's frame: a CPU selection mask, device relevancy and colours
            frame = frames.draw(on.gaussians, cam, mode, overlay, feature_colours=colours,
                                segment=on.segment, label_names=on.label_names)
            assert frame.image.dtype == np.uint8 and frame.image.shape == (32, 32, 3), mode
        edited = on.edit(sel, Delete())
        assert len(edited.gaussians) == on.num_gaussians - len(sel) and edited.gaussians.device == dev
        assert on.describe(sel)["num_selected"] == len(sel)


# -- where the viewer listens ----------------------------------------------------------------------

def _line(stream, seconds: float) -> str:
    """The next line of a subprocess's pipe, or "" when none comes within ``seconds``."""
    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline() if ready else ""


def test_view_warns_when_it_listens_beyond_this_machine(run):
    proc = subprocess.Popen([sys.executable, "-m", "featgs", "view", str(run), "--host", "0.0.0.0", "--port", "0",
                             "--no-cameras"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        line = ""
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = _line(proc.stdout, deadline - time.monotonic())
        assert re.search(r"at http://127\.0\.0\.1:\d+ ", line), line
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert "featgs: warning: listening on 0.0.0.0: anyone who can reach it" in err, err


def test_view_on_an_address_it_cannot_listen_on_is_one_line(run):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): no machine has it. viser alone tried a thousand ports,
    # then waited for ever; a subprocess bounds the wait even so.
    for host, message in (("192.0.2.1", "cannot listen on 192.0.2.1 port 0"),
                          ("no-such-host.invalid", "--host no-such-host.invalid: not an address")):
        out = subprocess.run([sys.executable, "-m", "featgs", "view", str(run), "--host", host, "--port", "0"],
                             capture_output=True, text=True, timeout=120)
        err = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(err) == 1 and err[0].startswith("featgs: error: ") and message in err[0], err
    with pytest.raises(FeatgsError, match="cannot listen on 192.0.2.1"):
        check_address("192.0.2.1", 8080)
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port in use is viser's to move past
        check_address("127.0.0.1", taken.getsockname()[1])


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback here")
def test_view_on_ipv6_loopback(run):
    app = ViewerApp(run, ViewerConfig(host="::1", port=0, frustums=False))
    try:
        app.start()
        assert app.url == f"http://[::1]:{app.port}"
        conn = http.client.HTTPConnection("::1", app.port, timeout=30)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and b"<html" in resp.read().lower()
        conn.close()
    finally:
        app.stop()
