"""`featgs view` in a real headless browser (Debian's chromium driven by Playwright).

The session's tiny trained run (``viewer_run``, tests/conftest.py), copied for the module, is
served by one `featgs view` process; each test opens its own page(s) and checks what the page
shows with pixel assertions on screenshots, kept under test-artifacts/viewer/. Skips (does not
fail) where chromium or playwright is missing; CI installs both.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from builders import copy_run

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "viewer"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 700}

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("viser", reason="viser is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow  # a trained run and a real browser

FRAME = re.compile(r"frame (\d+) · (\d+)×(\d+) (moving|still)")


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(viewer_run, tmp_path_factory) -> Path:
    """A copy of the session's viewer run (tests/conftest.py): the viewer saves edits into it."""
    return copy_run(viewer_run, tmp_path_factory.mktemp("viewer") / "run")


@pytest.fixture(scope="module")
def server(run_dir):
    """`featgs view RUN` in a subprocess; yields (process, url)."""
    cmd = [sys.executable, "-m", "featgs", "view", str(run_dir), "--port", "0", "--still-size", "192", "--moving-size", "96"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list = []
    url = None
    deadline = time.time() + 120
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving .* at (http://\S+)", line)
        if m:
            url = m.group(1)
    if url is None:
        proc.kill()
        pytest.fail(f"featgs view did not start: {''.join(lines)} {proc.stderr.read()}")
    # keep draining its pipes so the server never blocks on a full pipe
    err: list = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    proc.log = err  # type: ignore[attr-defined]
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# -- helpers -------------------------------------------------------------------------------------
def status(page) -> tuple:
    """(frame number, width, height, 'still'|'moving') of the last frame the page got."""
    loc = page.locator("text=/frame \\d+ ·/").first
    m = FRAME.search(loc.inner_text()) if loc.count() else None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)) if m else (0, 0, 0, "")


def wait_frame(page, after: int = 0, timeout: float = 60.0) -> int:
    """Wait for a still frame numbered above ``after`` and for the view to settle; returns its number."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        n, _, _, kind = status(page)
        if n > after and kind == "still":
            time.sleep(0.6)  # let the image reach the canvas (and any follow-up frame land)
            n2, _, _, kind2 = status(page)
            if n2 == n or kind2 == "still":
                return n2
        time.sleep(0.1)
    raise AssertionError(f"no new still frame after {after} within {timeout}s; status {status(page)}")


def open_page(browser, url: str, viewport=VIEWPORT):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(url)
    wait_frame(page)
    note = page.locator("text=Software WebGL rendering detected")
    if note.count():  # swiftshader's warning covers the top-left corner: close it
        box = note.first.locator("xpath=ancestor::div[contains(@class,'Notification-root')][1]")
        close = box.locator("button")
        if close.count():
            close.first.click()
    return page


def shot(page, name: str) -> np.ndarray:
    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int32)


def scene_box(page) -> tuple:
    """(x0, y0, x1, y1) of the canvas area not under the GUI panel or notifications."""
    panel = page.locator("text=/frame \\d+ ·/").first.bounding_box()
    return 0, 170, int(panel["x"]) - 30, VIEWPORT["height"]


def crop(img: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        m = out.copy()
        m[1:] |= out[:-1]
        m[:-1] |= out[1:]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        out = m
    return out


def gui_input(page, label: str):
    row = page.locator("div.mantine-Flex-root", has=page.locator(f"label:text-is('{label}')"))
    return row.locator("input").first


def set_query(page, text: str) -> None:
    before = status(page)[0]
    box = gui_input(page, "Query")
    box.fill(text)
    box.press("Enter")
    wait_frame(page, before)
    if text:  # the query runs beside the renders; the frame after it brings the count
        page.wait_for_selector("text=/selected \\(query/", timeout=30000)
        time.sleep(0.5)


def click_button(page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()


def largest_blob_centre(mask: np.ndarray) -> tuple:
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    assert n > 0, "no such pixels"
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    k = int(np.argmax(sizes)) + 1
    ys, xs = np.nonzero(lab == k)
    return int(np.median(xs)), int(np.median(ys)), int(sizes[k - 1])


# -- tests ---------------------------------------------------------------------------------------
def test_page_loads_and_shows_a_render(server, browser):
    _, url = server
    page = open_page(browser, url)
    n, w, h, kind = status(page)
    assert kind == "still" and max(w, h) == 192
    img = crop(shot(page, "01-rgb"), scene_box(page))
    assert img.std() > 12, "the canvas looks blank"
    # not viser's empty scene: the render fills the canvas with the room's colours
    assert (np.abs(img - img.mean((0, 1))).sum(-1) > 60).mean() > 0.05
    page.context.close()


STRUCTURE = {"floor", "wall", "ceiling", "table"}


@pytest.fixture(scope="module")
def target(run_dir):
    """(label, [H, W] bool canvas pixels) of the largest object in a new browser's first view.

    A new browser starts at the first training camera (same pose, same vertical field of view,
    the canvas's aspect), so the object's ground-truth label map, resampled to the canvas, says
    where the object is on screen: tests check the viewer's pixels against it.
    """
    from featgs.data import load_scene
    from featgs.run import read_run

    scene = load_scene(read_run(run_dir)["data"])
    view = scene.train[0]
    cam, labels = view.camera, view.labels().numpy()
    W, H = VIEWPORT["width"], VIEWPORT["height"]
    f = 0.5 * H * cam.fy / (0.5 * cam.height)  # the canvas focal length: same vertical field of view
    X, Y = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    u = np.floor(cam.cx + (X - W / 2) * cam.fx / f).astype(int)
    v = np.floor(cam.cy + (Y - H / 2) * cam.fy / f).astype(int)
    inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    ids = np.full((H, W), -1)
    ids[inside] = labels[v[inside], u[inside]]
    visible = np.zeros((H, W), bool)
    visible[170:, : W - 460] = True  # not under the GUI panel nor a notification
    best = max((int(((ids == i) & visible).sum()), name) for i, name in scene.label_names.items() if name not in STRUCTURE)
    name = best[1]
    region = np.isin(ids, [i for i, n in scene.label_names.items() if n == name])
    assert best[0] > 1500, f"no object big enough in the first view ({best})"
    return name, region


def region_in(box, region: np.ndarray) -> np.ndarray:
    return crop(region[..., None], box)[..., 0]


def test_query_highlights_the_object_it_names(server, browser, target):
    _, url = server
    name, region = target
    page = open_page(browser, url)
    box = scene_box(page)
    obj = region_in(box, region)
    before = crop(shot(page, "02-before-query"), box)
    set_query(page, name)
    after = crop(shot(page, f"03-query-{name.replace(' ', '-')}"), box)
    changed = np.abs(after - before).sum(-1) > 60
    assert (changed & obj).sum() > 0.4 * obj.sum(), f"typing {name!r} should change the pixels of the {name}"
    inside = (changed & dilate(obj, 12)).sum() / max(changed.sum(), 1)
    assert inside > 0.7, f"the changed pixels should be where the {name} is ({inside:.2f} are)"
    text = page.locator("text=/selected \\(query/").first.inner_text()
    assert re.search(r"\d+ of \d+ Gaussians selected", text)
    page.context.close()


def test_click_prompt_masks_the_object_and_delete_removes_it(server, browser, run_dir, target):
    _, url = server
    name, region = target
    page = open_page(browser, url)
    box = scene_box(page)
    obj = region_in(box, region)
    before = crop(shot(page, "04-before-click"), box)
    x, y, _ = largest_blob_centre(obj)
    n = status(page)[0]
    page.mouse.click(box[0] + x, box[1] + y)
    page.wait_for_selector("text=/selected \\(click\\)/", timeout=60000)
    n = wait_frame(page, n)
    masked = crop(shot(page, "05-click-mask"), box)
    cyan = (masked[..., 1] > 170) & (masked[..., 2] > 190) & (masked[..., 0] < 120)
    assert (cyan & dilate(obj, 10)).sum() > 30, "the mask should be drawn on the clicked object"
    assert (cyan & ~dilate(obj, 25)).sum() < 0.25 * cyan.sum(), "the mask should stay on the clicked object"

    click_button(page, "Delete")
    undone = False
    try:
        page.wait_for_selector("text=Nothing selected.", timeout=30000)
        n = wait_frame(page, n)
        deleted = crop(shot(page, "06-deleted"), box)
        diff = np.abs(deleted - before).sum(-1)
        far = ~dilate(obj, 25)
        assert diff[obj].mean() > 40 and diff[obj].mean() > 4 * diff[far].mean(), \
            f"the {name} should vanish and the rest stay ({diff[obj].mean():.0f} vs {diff[far].mean():.0f})"

        click_button(page, "Save edited PLY")
        page.wait_for_selector("text=/edited-1\\.ply/", timeout=30000)
        from featgs.gaussians import load_ply

        saved = load_ply(run_dir / "edits" / "edited-1.ply")
        original = load_ply(run_dir / "point_cloud.ply")
        assert 0 < len(saved) < len(original)

        click_button(page, "Undo")
        undone = True
    finally:
        if not undone:  # a failed check must not leave the object deleted for the tests after this one
            click_button(page, "Undo")
    wait_frame(page, n)
    restored = crop(shot(page, "07-undone"), box)
    assert np.abs(restored - before).sum(-1)[obj].mean() < 0.3 * diff[obj].mean()
    page.context.close()


def test_modes_box_prompt_and_recolour(server, browser, target):
    _, url = server
    name, region = target
    page = open_page(browser, url)
    box = scene_box(page)
    obj = region_in(box, region)
    rgb = crop(shot(page, "14-rgb"), box)
    n = status(page)[0]
    select_mode(page, "Segmentation")
    n = wait_frame(page, n)
    seg = crop(shot(page, "15-segmentation"), box)
    assert np.abs(seg - rgb).mean() > 10
    assert page.locator(f"text={name}").count() >= 1, "the segmentation legend should name the labels in view"

    select_mode(page, "Relevancy")
    n = wait_frame(page, n)
    set_query(page, name)
    heat = crop(shot(page, f"16-relevancy-{name.replace(' ', '-')}"), box)
    hot = heat.max(-1) - heat.min(-1) > 80  # saturated heat colours; the rest is greyed
    assert (hot & obj).sum() > 0.3 * obj.sum() and (hot & dilate(obj, 12)).sum() > 0.6 * hot.sum(), \
        "the heat should sit on the object"

    select_mode(page, "RGB")
    set_query(page, "")
    n = wait_frame(page, status(page)[0] - 1)
    ys, xs = np.nonzero(obj)
    page.keyboard.down("Shift")  # Shift+drag: a box prompt around the object
    page.mouse.move(box[0] + int(xs.min()) - 8, box[1] + int(ys.min()) - 8)
    page.mouse.down()
    page.mouse.move(box[0] + int(xs.max()) + 8, box[1] + int(ys.max()) + 8, steps=8)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_selector("text=/selected \\(box\\)/", timeout=60000)
    n = wait_frame(page, n)
    click_button(page, "Recolour")  # the picker's default: orange
    page.wait_for_selector("text=Nothing selected.", timeout=30000)
    n = wait_frame(page, n)
    recoloured = crop(shot(page, "17-recoloured"), box)
    # orange: green well above blue (red things have g ~ b); Recolor keeps the shading
    warmth = lambda img: (img[..., 1] - img[..., 2])[obj].mean()  # noqa: E731
    assert warmth(recoloured) > warmth(rgb) + 8, f"the {name} should have turned orange"
    click_button(page, "Undo")
    wait_frame(page, n)
    page.context.close()


def test_second_browser_connects_while_the_first_is_busy(server, browser):
    _, url = server
    first = open_page(browser, url)
    box = scene_box(first)
    initial = crop(shot(first, "08-first-initial"), box)
    start = status(first)[0]
    first.mouse.move(box[0] + 300, 450)
    first.mouse.down()
    second = browser.new_context(viewport=VIEWPORT).new_page()
    second.goto(url, wait_until="commit")
    t0 = time.time()
    x = box[0] + 300
    got = None
    while time.time() - t0 < 60:  # keep the first browser orbiting until the second has its view
        x += 5
        first.mouse.move(x, 450)
        n, _, _, kind = status(second)
        if n and kind == "still":
            got = time.time() - t0
            break
    first.mouse.up()
    assert got is not None, "the second browser got no frame while the first was orbiting"
    assert status(first)[0] > start + 2, "the first browser should have been rendering meanwhile"
    wait_frame(first, status(first)[0] - 1)
    wait_frame(second, status(second)[0] - 1)
    a = crop(shot(first, "09-first-orbited"), box)
    b = crop(shot(second, "10-second"), box)
    assert b.std() > 12
    # each has its own camera: the second shows the initial view, the first has orbited away
    assert np.abs(b - initial).mean() < np.abs(a - initial).mean() - 5
    first.context.close()
    second.context.close()


def select_mode(page, mode: str) -> None:
    row = page.locator("div.mantine-Flex-root", has=page.locator("label:text-is('Mode')"))
    row.locator("input").first.click()
    page.get_by_role("option", name=mode, exact=True).click()


def test_a_render_error_shows_a_message_and_the_server_lives_on(run_dir, browser):
    from featgs.viewer import ViewerApp, ViewerConfig
    from featgs.viewer.field import FieldAdapter

    class Failing(FieldAdapter):
        fail = threading.Event()

        def gaussians(self, field):
            if self.fail.is_set():
                raise RuntimeError("injected render failure")
            return super().gaussians(field)

    adapter = Failing()
    app = ViewerApp(run_dir, ViewerConfig(port=0, still_size=96, moving_size=48), adapter=adapter).start()
    try:
        page = open_page(browser, app.url)
        (client_id,) = [s.client.client_id for s in app.sessions()]
        n = status(page)[0]
        adapter.fail.set()
        select_mode(page, "Depth")
        page.wait_for_selector("text=Render failed", timeout=30000)
        assert page.locator("text=/injected render failure/").count()
        shot(page, "11-render-error")
        adapter.fail.clear()
        other = open_page(browser, app.url)  # the server still serves new browsers
        assert status(other)[0] >= 1
        select_mode(page, "RGB")  # and the failed browser renders again
        n = wait_frame(page, n)
        box = scene_box(page)
        here = crop(shot(page, "12-before-jump"), box)
        app._jump(client_id, app.cameras[len(app.cameras) // 2])  # what a click on a frustum does
        wait_frame(page, n)
        there = crop(shot(page, "13-after-jump"), box)
        assert np.abs(there - here).mean() > 10, "jumping to another training camera should change the view"
        box_ = gui_input(page, "Query")  # a query the field refuses: one message, the view goes on
        box_.fill("x" * 600)
        box_.press("Enter")
        page.wait_for_selector("text=Query failed", timeout=30000)
        page.wait_for_selector("text=The query failed.", timeout=30000)
        assert page.get_by_text("Query failed", exact=True).count() == 1
        other.context.close()
        page.context.close()
    finally:
        app.stop()
    left = [t.name for t in threading.enumerate() if t.name.startswith("featgs-render")]
    assert not left, f"render threads left running after stop(): {left}"


def test_ctrl_c_stops_the_server_cleanly(server):
    proc, _ = server
    assert proc.poll() is None, "the server died during the tests: " + "".join(proc.log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert not any("Traceback" in line for line in proc.log), "".join(proc.log)
