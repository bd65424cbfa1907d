"""The HTTP API on the tiny trained tabletop run (``tabletop_run``, tests/conftest.py): every
endpoint, bad requests, traversal."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featgs.cli import main
from featgs.data import load_scene
from featgs.gaussians import load_ply
from featgs.query import FeatureField
from featgs.server import FieldServer
from featgs.server.app import MAX_BODY
from builders import copy_run


@pytest.fixture(scope="module")
def run(tabletop_run, tmp_path_factory) -> Path:
    """A copy of the shared run: the server saves edits under RUN/edits."""
    return copy_run(tabletop_run, tmp_path_factory.mktemp("server") / "run")


@pytest.fixture(scope="module")
def server(run):
    with FieldServer(FeatureField.load(run), ("127.0.0.1", 0), quiet=True).start() as srv:
        yield srv


def call(server, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
    """(status, content type, payload: parsed JSON or bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=headers or ({"Content-Type": "application/json"} if data else {}))
    resp = conn.getresponse()
    payload = resp.read()
    kind = resp.getheader("Content-Type")
    conn.close()
    return resp.status, kind, json.loads(payload) if kind == "application/json" and method != "HEAD" else payload


def png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)))


def test_health_views_and_schema(server):
    status, _, health = call(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["num_gaussians"] > 0 and "wall" in health["label_names"]
    status, _, views = call(server, "GET", "/views")
    assert status == 200 and len(views["test"]) == 3 and views["test"][0]["width"] == 32
    status, _, doc = call(server, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/query", "/segment", "/prompt", "/edit", "/render"):
        schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["type"] == "object" and schema["required"]
    assert server.server_address[0] == "127.0.0.1"


def test_query_segment_prompt_render(server, run):
    status, _, sel = call(server, "POST", "/query", {"text": "wall", "with_ids": True})
    assert status == 200 and sel["num_selected"] == len(sel["ids"]) > 0
    assert len(sel["bbox"]) == 2 and len(sel["centroid"]) == 3 and sel["rule"] == "labels"

    status, _, seg = call(server, "POST", "/segment", {"camera": {"view": 1}, "labels": ["wall", "floor", "table"]})
    label_map = png(base64.b64decode(seg["label_map_png"]))
    assert status == 200 and label_map.shape == (32, 32) and sum(seg["counts"]) == 32 * 32
    assert np.bincount(label_map.ravel(), minlength=3).tolist() == seg["counts"]

    status, _, out = call(server, "POST", "/prompt", {"camera": {"view": 0}, "points": [[16.5, 1.5]]})
    mask = png(base64.b64decode(out["mask_png"]))
    assert status == 200 and mask.shape == (32, 32) and out["mask_area"] == int((mask > 0).sum()) > 0
    assert out["selection"]["num_selected"] > 0

    cam = FeatureField.load(run).camera(2)  # as an explicit camera
    explicit = {"width": cam.width, "height": cam.height, "K": cam.K.tolist(), "camtoworld": cam.camtoworld.tolist()}
    for mode in ("rgb", "depth", "features", "relevancy", "segmentation", "selection"):
        status, kind, image = call(server, "POST", "/render", {"camera": explicit, "mode": mode, "text": "table"})
        assert status == 200 and kind == "image/png" and png(image).shape == (32, 32, 3), mode


def test_a_program_can_speak_in_its_datasets_frame(server, run):
    """Selections report where things are in the dataset's frame too, and cameras can be posed
    there: the same test view, posed as in the dataset's transforms.json, renders the same."""
    field = FeatureField.load(run)
    status, _, sel = call(server, "POST", "/query", {"text": "table"})
    centroid = torch.tensor(sel["centroid"], dtype=torch.float64)
    back = torch.linalg.inv(field.normalization) @ torch.cat([centroid, torch.ones(1, dtype=torch.float64)])
    assert status == 200 and np.allclose(sel["dataset_frame"]["centroid"], back[:3].numpy(), atol=1e-4)
    assert sel["dataset_frame"]["centroid"][2] > 0.5  # the table top stands 0.74 m above the floor
    dataset_cam = load_scene(json.loads((run / "run.json").read_text())["data"], normalize=False).test[2].camera
    posed = {"width": dataset_cam.width, "height": dataset_cam.height, "K": dataset_cam.K.tolist(),
             "camtoworld": dataset_cam.camtoworld.tolist(), "frame": "dataset"}
    _, _, there = call(server, "POST", "/render", {"camera": posed})
    _, _, here = call(server, "POST", "/render", {"camera": {"view": 2}})
    _, _, unmoved = call(server, "POST", "/render", {"camera": {**posed, "frame": "run"}})
    assert np.abs(png(there).astype(int) - png(here).astype(int)).max() <= 1
    assert np.abs(png(unmoved).astype(int) - png(here).astype(int)).mean() > 10


def test_edit_saves_under_the_run_or_returns_the_ply(server, run, tmp_path):
    status, _, out = call(server, "POST", "/edit", {"selection": {"text": "table"}, "op": "delete", "name": "no_table"})
    assert status == 200 and out["saved"] == "edits/no_table.ply"
    saved = load_ply(run / "edits" / "no_table.ply")
    assert len(saved) == out["num_gaussians"] < len(load_ply(run / "point_cloud.ply"))
    status, _, out = call(server, "POST", "/edit", {"selection": {"text": "table"}, "op": "delete", "name": "no_table"})
    assert status == 409  # no silent overwrite
    status, _, out = call(server, "POST", "/edit", {"selection": {"text": "table"}, "op": "delete", "name": "no_table",
                                                    "overwrite": True})
    assert status == 200
    status, kind, ply = call(server, "POST", "/edit", {"selection": {"ids": [0, 1, 2]}, "op": "recolor", "rgb": [1, 0, 0]})
    assert status == 200 and kind == "application/octet-stream" and ply.startswith(b"ply\n")
    (tmp_path / "r.ply").write_bytes(ply)
    assert len(load_ply(tmp_path / "r.ply")) == len(load_ply(run / "point_cloud.ply"))
    clicked = {"prompt": {"camera": {"view": 0}, "points": [[16.5, 1.5]]}}
    status, _, out = call(server, "POST", "/edit", {"selection": clicked, "op": "translate", "offset": [0, 0, 0.1],
                                                    "name": "moved-wall_1"})
    assert status == 200 and (run / "edits" / "moved-wall_1.ply").exists()


def test_concurrent_edits_of_one_name_write_once(server, run):
    body = {"selection": {"ids": list(range(50))}, "op": "delete", "name": "raced"}
    for attempt in range(3):  # the race needs both requests past the early check at once
        (run / "edits" / "raced.ply").unlink(missing_ok=True)
        with ThreadPoolExecutor(4) as pool:
            statuses = sorted(r[0] for r in pool.map(lambda _: call(server, "POST", "/edit", body), range(4)))
        assert statuses == [200, 409, 409, 409], statuses


EYE4 = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
BAD = [
    ("POST", "/query", {"text": ""}, 400, "empty"),
    ("POST", "/query", {"text": "   "}, 400, "blank"),
    ("POST", "/query", {"text": "x" * 201}, 400, "at most 200"),
    ("POST", "/query", {"text": 5}, 400, "expected string"),
    ("POST", "/query", {}, 400, "missing 'text'"),
    ("POST", "/query", {"text": "mug", "colour": 1}, 400, "unknown field"),
    ("POST", "/query", {"text": "mug", "rule": "absolute"}, 400, "threshold"),
    ("POST", "/query", {"text": "mug", "threshold": True}, 400, "expected number"),
    ("POST", "/query", {"text": "mug", "negatives": ["a"] * 17}, 400, "items"),
    ("POST", "/query", [1, 2], 400, "expected object"),
    ("POST", "/segment", {"camera": {"view": 3}}, 400, "view index"),
    ("POST", "/segment", {"camera": {"view": 0, "split": "val"}}, 400, "camera"),
    ("POST", "/segment", {"camera": {"width": 4096, "height": 10, "K": [[1, 0, 1], [0, 1, 1], [0, 0, 1]],
                                     "camtoworld": EYE4}}, 400, "camera"),
    ("POST", "/segment", {"camera": {"width": 10, "height": 10, "K": [[1, 0, 1], [0, 1, 1], [0, 0, 1]],
                                     "camtoworld": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}}, 400, "rigid"),
    ("POST", "/segment", {"camera": {"width": 10, "height": 10, "K": [[-1, 0, 1], [0, 1, 1], [0, 0, 1]],
                                     "camtoworld": EYE4}}, 400, "focal"),
    ("POST", "/segment", {"camera": {"view": 0}, "labels": []}, 400, "items"),
    ("POST", "/prompt", {"camera": {"view": 0}}, 400, "foreground point or a box"),
    ("POST", "/prompt", {"camera": {"view": 0}, "points": [[100, 1]]}, 400, "inside"),
    ("POST", "/prompt", {"camera": {"view": 0}, "points": [[1, 1]], "point_labels": [3]}, 400, "one of 0, 1"),
    ("POST", "/prompt", {"camera": {"view": 0}, "box": [5, 5, 2, 2]}, 400, "x0 < x1"),
    ("POST", "/render", {"camera": {"view": 0}, "mode": "relevancy"}, 400, "needs 'text'"),
    ("POST", "/render", {"camera": {"view": 0}, "mode": "x-ray"}, 400, "one of"),
    ("POST", "/edit", {"selection": {"text": "wall"}, "op": "recolor"}, 400, "needs 'rgb'"),
    ("POST", "/edit", {"selection": {"text": "wall"}, "op": "delete", "rgb": [1, 1, 1]}, 400, "does not apply"),
    ("POST", "/edit", {"selection": {"text": "wall"}, "op": "recolor", "rgb": [2, 0, 0]}, 400, "0..1"),
    ("POST", "/edit", {"selection": {"ids": [10 ** 9]}, "op": "delete"}, 400, "ids must lie"),
    ("POST", "/edit", {"selection": {"ids": [10 ** 30]}, "op": "delete"}, 400, "must lie in"),
    ("POST", "/render", {"camera": {"width": 10, "height": 10, "K": [[1e300, 0, 1], [0, 1, 1], [0, 0, 1]],
                                    "camtoworld": EYE4}}, 400, "must lie in"),
    ("POST", "/render", {"camera": {"width": 10, "height": 10, "K": [[9e5, 0, 1], [0, 1, 1], [0, 0, 1]],
                                    "camtoworld": EYE4}}, 400, "focal"),
    ("POST", "/edit", {"selection": {"ids": [1], "text": "a"}, "op": "delete"}, 400, "selection"),
    ("POST", "/edit", {"selection": {"text": "wall"}, "op": "delete", "name": "../../evil"}, 400, "paths are not accepted"),
    ("POST", "/edit", {"selection": {"text": "wall"}, "op": "delete", "name": "/tmp/evil"}, 400, "paths are not accepted"),
    ("POST", "/edit", {"selection": {"text": "wall"}, "op": "delete", "name": "a.ply"}, 400, "paths are not accepted"),
    ("POST", "/nope", {"text": "wall"}, 404, "no endpoint"),
    ("GET", "/../../etc/passwd", None, 404, "no endpoint"),
    ("GET", "/query", None, 405, "takes POST"),
    ("POST", "/health", {}, 405, "takes GET"),
    ("PUT", "/query", {"text": "wall"}, 405, "takes POST"),
    ("BREW", "/query", {"text": "wall"}, 405, "method"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_4xx_with_a_message(server, method, path, body, status, message):
    got, kind, out = call(server, method, path, body)
    assert got == status and kind == "application/json" and message in out["error"], out


def test_malformed_bodies_and_the_server_stays_up(server, run, tmp_path):
    assert call(server, "POST", "/query", raw=b"{not json")[0] == 400
    assert call(server, "POST", "/query", raw=b'{"text": NaN}')[0] == 400
    assert call(server, "POST", "/query", raw=b"\xff\xfe")[0] == 400
    assert call(server, "HEAD", "/health")[0] == 405
    assert call(server, "POST", "/query", raw=b"[" * 100000 + b"]" * 100000)[0] == 400
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/query")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds" in json.loads(resp.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/query")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    # a client that sends all of a refused body before it reads (as most do) still gets the answer
    for body, headers, status in [(b" " * (MAX_BODY + 1), {"Content-Type": "application/json"}, 413),
                                  (b"x" * (1 << 20), {"Content-Type": "text/plain"}, 415)]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        conn.request("POST", "/query", body=body, headers=headers)
        resp = conn.getresponse()
        assert resp.status == status and "error" in json.loads(resp.read())
        conn.close()
    # nothing was written outside RUN/edits, and the server still answers, also in parallel
    assert not (run.parent / "evil.ply").exists() and not Path("/tmp/evil.ply").exists()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda t: call(server, "POST", "/query", {"text": t}),
                                ["wall", "floor", "table", "cup"]))
    assert all(a[0] == 200 for a in answers)
    assert call(server, "GET", "/health")[0] == 200


def test_serve_command_binds_to_localhost_and_stops_on_ctrl_c(run, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "featgs", "serve", str(run), "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://(127\.0\.0\.1):(\d+)", line)
        assert url, line
        conn = http.client.HTTPConnection(url.group(1), int(url.group(2)), timeout=120)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)  # generous: a loaded machine is slow to stop
    assert proc.returncode == 130, err
    assert main(["serve", str(run.parent), "--port", "0"]) == 2
    assert main(["serve", str(run), "--port", "70000"]) == 2
    assert main(["serve", str(run), "--sam-checkpoint", str(run / "run.json")]) == 2  # the run has no SAM block
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("featgs: error:") for e in err)
