"""One browser tab: its GUI, its camera, its selection and its render thread.

Everything a callback does here is cheap (read a widget, post a request) except prompts and
edits, which viser runs on its thread pool, so the GUI never waits for a render. Failures
become a notification in that browser; the server and the other browsers carry on.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Optional, Tuple

import numpy as np

from featgs.errors import FeatgsError
from featgs.viewer import frames, images
from featgs.viewer.cameras import ViewPose
from featgs.viewer.worker import RenderWorker

if TYPE_CHECKING:  # pragma: no cover
    from featgs.viewer.app import ViewerApp

HELP = (
    "Drag to orbit, scroll to zoom. **Click** an object for a point prompt, "
    "**Shift+drag** a box for a box prompt; click a camera frustum to jump to it."
)


class ClientSession:
    """The state and widgets of one connected browser."""

    def __init__(self, app: "ViewerApp", client: Any) -> None:
        self.app = app
        self.client = client
        self.config = app.config
        self._lock = threading.Lock()  # guards the fields below
        self._pose: Optional[ViewPose] = None
        self._selection = None  # a prompt's Selection (wins over the query's)
        self._selection_version = -1
        self._selection_source = ""
        self._mask: Optional[np.ndarray] = None
        self._mask_pose: Optional[ViewPose] = None
        self._query_cache: dict = {}
        self._failed_query: Optional[tuple] = None  # the key of a query that raised: not retried
        self._last_error = ""
        self._closed = False
        self.frames = 0
        self.last_jump = 0.0  # when a frustum click last moved this camera (monotonic seconds)
        self._build_gui()
        self.worker = RenderWorker(self._render, self._render_failed, still_delay=self.config.still_delay,
                                   slots=app.render_slots, name=f"featgs-render-{client.client_id}")
        self.query_worker = RenderWorker(self._answer_query, self._query_failed,
                                         name=f"featgs-render-query-{client.client_id}")
        client.camera.on_update(self._camera_moved)
        client.scene.on_click()(self._guarded(self._clicked))
        client.scene.on_rect_select(modifier="shift")(self._guarded(self._boxed))
        try:  # viser reports a client once its first camera message came: draw it now
            self._camera_moved(client.camera)
        except AssertionError:  # no camera yet: the first camera message will draw
            pass

    # -- GUI --------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui, cfg = self.client.gui, self.config
        self.status = gui.add_markdown("connecting…")
        with gui.add_folder("View"):
            modes = [m for m in frames.MODES if m in self.app.modes]
            self.mode = gui.add_dropdown("Mode", modes, initial_value=modes[0])
            self.legend = gui.add_html("", visible=False)
        with gui.add_folder("Query"):
            self.query = gui.add_text("Query", initial_value="", hint="a label or phrase, e.g. 'red mug'",
                                      disabled=not self.app.can_query)
            self.threshold = gui.add_slider("Threshold", min=0.05, max=0.95, step=0.05,
                                            initial_value=cfg.threshold, disabled=not self.app.can_query)
            self.selected = gui.add_markdown("Nothing selected.")
            self.clear = gui.add_button("Clear selection")
        with gui.add_folder("Edit"):
            self.delete = gui.add_button("Delete", color="red")
            self.extract = gui.add_button("Extract")
            self.colour = gui.add_rgb("Colour", initial_value=(255, 140, 0))
            self.recolour = gui.add_button("Recolour")
            self.undo = gui.add_button("Undo")
            self.save = gui.add_button("Save edited PLY")
        gui.add_markdown(HELP)

        self.mode.on_update(self._guarded(lambda _: self._changed()))
        self.query.on_update(self._guarded(lambda _: self._query_changed()))
        self.threshold.on_update(self._guarded(lambda _: self._query_changed()))
        self.clear.on_click(self._guarded(lambda _: self._clear_selection(clear_query=True)))
        self.delete.on_click(self._guarded(lambda _: self._edit("delete")))
        self.extract.on_click(self._guarded(lambda _: self._edit("extract")))
        self.recolour.on_click(self._guarded(lambda _: self._edit("recolour")))
        self.undo.on_click(self._guarded(lambda _: self._undo()))
        self.save.on_click(self._guarded(lambda _: self._save()))
        for button in (self.delete, self.extract, self.recolour, self.undo, self.save):
            button.disabled = not self.app.can_edit and button is not self.save

    def notify(self, title: str, body: str, *, error: bool = False) -> None:
        try:
            self.client.add_notification(title, body, color="red" if error else "green",
                                         auto_close_seconds=12.0 if error else 4.0)
        except Exception:  # the browser may be gone
            pass

    def _guarded(self, fn):
        """Run a callback; its errors become a notification in this browser (and stderr)."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FeatgsError as e:
                self.notify("Could not do that", str(e), error=True)
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                self.notify("Error", f"{e.__class__.__name__}: {e}", error=True)

        return wrapper

    # -- requests ---------------------------------------------------------------------------
    def _camera_moved(self, camera) -> None:
        pose = ViewPose.of(camera.wxyz, camera.position, camera.fov, camera.aspect)
        with self._lock:
            first = self._pose is None
            self._pose = pose
        self.worker.submit(pose, moving=not first)

    def request(self) -> None:
        """Redraw the current view at full resolution (after a GUI change or an edit)."""
        with self._lock:
            pose = self._pose
        if pose is not None and not self._closed:
            self.worker.submit(pose, moving=False)

    def _changed(self) -> None:
        self.request()

    def _query_changed(self) -> None:
        self._clear_selection(clear_query=False, redraw=False)
        self.request()

    def scene_changed(self, version: int) -> None:
        """Another edit or undo happened: selections made before it are stale."""
        with self._lock:
            if self._selection_version != version:
                self._selection, self._mask, self._mask_pose = None, None, None
            self._query_cache.clear()
        self.request()

    def _clear_selection(self, *, clear_query: bool, redraw: bool = True) -> None:
        with self._lock:
            self._selection, self._mask, self._mask_pose, self._selection_source = None, None, None, ""
        if clear_query and self.query.value:
            self.query.value = ""  # its callback redraws
        elif redraw:
            self.request()

    # -- queries ----------------------------------------------------------------------------
    def _query_key(self, version: int) -> Optional[tuple]:
        text = self.query.value.strip()
        if not text or not self.app.can_query:
            return None
        return (text, round(float(self.threshold.value), 4), version)

    def _query_result(self, field, version: int, *, wait: bool = True) -> Optional[Tuple[Any, Any, tuple]]:
        """(selection, per-Gaussian relevancy, heat range) of the text box, cached per scene version.

        ``wait=False`` (the render thread): None until the query thread has answered, so the
        view stays live while a slow query runs; the query thread redraws when it is done.
        """
        key = self._query_key(version)
        if key is None:
            return None
        with self._lock:
            hit = self._query_cache.get(key)
        if hit is None and wait:
            hit = self._run_query_now(field, key)
        elif hit is None and key != self._failed_query:
            self.query_worker.submit(key)
        return hit

    def _run_query_now(self, field, key: tuple):
        text, threshold, version = key
        hit = self.app.adapter.query(field, text, threshold)
        with self._lock:
            self._query_cache = {key: hit}
        return hit

    def _answer_query(self, key: tuple, moving: bool) -> None:
        """The query thread: run the newest query, then redraw with it."""
        field, version = self.app.scene.snapshot()
        if self._closed or key != self._query_key(version):
            return  # superseded by newer text or another edit
        with self._lock:
            if key in self._query_cache:
                return
        try:
            self._run_query_now(field, key)
        except Exception:
            self._failed_query = key  # one message per failing query, not one per frame
            raise
        finally:
            self.request()

    def active_selection(self):
        """(selection, scene version, where it came from) of what an edit would act on."""
        field, version = self.app.scene.snapshot()
        with self._lock:
            if self._selection is not None and self._selection_version == version:
                return self._selection, version, self._selection_source
        q = self._query_result(field, version)
        if q is not None:
            return q[0], version, f"query '{self.query.value.strip()}'"
        return None, version, ""

    # -- prompts ----------------------------------------------------------------------------
    def _prompt(self, *, point=None, box=None) -> None:
        if not self.app.can_prompt:
            raise FeatgsError("this run's Gaussians carry no features: prompts need a feature field")
        with self._lock:
            pose = self._pose
        if pose is None:
            return
        camera = pose.camera(self.config.still_size)
        field, version = self.app.scene.snapshot()
        if point is not None:
            px = (point[0] * camera.width, point[1] * camera.height)
            mask, sel = self.app.adapter.prompt(field, camera, point=px)
            source = "click"
        else:
            (x0, y0), (x1, y1) = box
            bx = (x0 * camera.width, y0 * camera.height, x1 * camera.width, y1 * camera.height)
            mask, sel = self.app.adapter.prompt(field, camera, box=bx)
            source = "box"
        with self._lock:
            self._selection, self._selection_version, self._selection_source = sel, version, source
            self._mask, self._mask_pose = mask, pose
        self.request()

    def _clicked(self, event) -> None:
        time.sleep(0.1)  # a click on a camera frustum also reaches here: it jumps, it is no prompt
        if time.monotonic() - self.last_jump < 0.5:
            return
        self._prompt(point=event.screen_pos)

    def _boxed(self, event) -> None:
        self._prompt(box=(event.screen_min, event.screen_max))

    # -- edits ------------------------------------------------------------------------------
    def _edit(self, op: str) -> None:
        sel, version, source = self.active_selection()
        if sel is None or len(sel) == 0:
            raise FeatgsError("nothing selected: type a query, click an object or Shift+drag a box first")
        kwargs = {}
        if op == "recolour":
            kwargs["colour"] = tuple(c / 255.0 for c in self.colour.value)  # the picker gives 0..255
        n = len(sel)
        self.app.scene.apply(lambda f: self.app.adapter.edit(f, sel, op, **kwargs), expect_version=version)
        self._clear_selection(clear_query=True)  # show the result, not a highlight over it
        verb = {"delete": "Deleted", "extract": "Extracted", "recolour": "Recoloured"}[op]
        self.notify(verb, f"{n} Gaussians ({source}). Undo restores them.")

    def _undo(self) -> None:
        if not self.app.scene.undo():
            raise FeatgsError("nothing to undo")

    def _save(self) -> None:
        path = self.app.scene.save()
        self.notify("Saved", f"{path}")

    # -- the render thread ------------------------------------------------------------------
    def _render(self, pose: ViewPose, moving: bool) -> None:
        if self._closed:
            return
        field, version = self.app.scene.snapshot()
        mode = self.mode.value
        camera = pose.camera(self.config.moving_size if moving else self.config.still_size)
        overlay = frames.Overlay()
        query = self._query_result(field, version, wait=False)
        key = self._query_key(version)
        pending = query is None and key is not None and key != self._failed_query
        sel, sel_source = None, ""
        with self._lock:
            if self._selection is not None and self._selection_version == version:
                sel, sel_source = self._selection, self._selection_source
                if self._mask is not None and self._mask_pose == pose:
                    overlay.mask = self._mask
        if sel is None and query is not None:
            sel, sel_source = query[0], f"query '{self.query.value.strip()}'"
        gaussians = self.app.adapter.gaussians(field)
        if sel is not None and len(sel) and not (mode == "Relevancy" and sel_source.startswith("query")):
            overlay.selected = sel.mask()  # (relevancy mode shows the query itself as heat)
        if query is not None:
            overlay.relevancy, overlay.relevancy_range = query[1], query[2]
        frame = frames.draw(gaussians, camera, mode, overlay,
                            feature_colours=self.app.feature_colours(field, version),
                            segment=(lambda cam: self.app.adapter.segment(field, cam)) if self.app.can_segment else None,
                            label_names=self.app.adapter.label_names(field))
        if self._closed:
            return
        self.client.scene.set_background_image(frame.image, format="jpeg" if moving else "png",
                                               jpeg_quality=self.config.jpeg_quality)
        self.frames += 1
        n = len(gaussians)
        if sel is not None:
            sel_text = f"**{len(sel)}** of {n} Gaussians selected ({sel_source})."
        else:
            sel_text = f"Querying '{self.query.value.strip()}'…" if pending else (
                "The query failed." if key is not None and key == self._failed_query else "Nothing selected.")
        quality = "moving" if moving else "still"
        status = (f"frame {self.frames} · {camera.width}×{camera.height} {quality} · "
                  f"render {1000 * frame.seconds:.0f} ms · {n} Gaussians")
        with self.client.atomic():
            self.status.content = status
            self.selected.content = sel_text
            if mode == "Segmentation" and frame.legend:
                self.legend.content = images.legend_html(list(frame.legend), np.stack(list(frame.legend.values())))
                self.legend.visible = True
            elif self.legend.visible:
                self.legend.visible = False
        self._last_error = ""

    def _render_failed(self, error: BaseException) -> None:
        msg = f"{error.__class__.__name__}: {error}"
        if msg != self._last_error:  # one notification per distinct failure, not one per frame
            self._last_error = msg
            print(f"featgs view: render failed for client {self.client.client_id}:", file=sys.stderr)
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            self.notify("Render failed", msg + " — the server is still running; try another mode or view.", error=True)

    def _query_failed(self, error: BaseException) -> None:
        if isinstance(error, FeatgsError):
            self.notify("Query failed", str(error), error=True)
        else:
            self._render_failed(error)

    def close(self) -> None:
        self._closed = True
        self.worker.close(timeout=2.0)
        self.query_worker.close(timeout=2.0)
