"""One browser tab: its GUI, its camera, its selection and its render thread.

Everything a callback does here is cheap (read a widget, post a request) except prompts and
edits, which run on a thread pool, so the GUI never waits for a render. Failures become a
notification in that browser; the server and the other browsers carry on.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple

import numpy as np

from featgs.errors import FeatgsError
from featgs.query import FeatureField, Selection
from featgs.viewer import frames, images
from featgs.viewer.cameras import ViewPose
from featgs.viewer.config import ViewerConfig
from featgs.viewer.field import FieldAdapter, QueryAnswer
from featgs.viewer.state import SharedScene
from featgs.viewer.worker import FairSlots, RenderWorker

if TYPE_CHECKING:  # pragma: no cover  (viser is imported only when a server starts)
    import viser

HELP = (
    "Drag to orbit, scroll to zoom. **Click** an object for a point prompt, "
    "**Shift+drag** a box for a box prompt; click a camera frustum to jump to it."
)


SAME_CLICK = 0.05  # a frustum's click and the scene's click of one gesture lie this close (canvas fractions)


@dataclass(frozen=True)
class SessionContext:
    """What a browser's session uses of the viewer, and nothing more.

    Attributes:
        config: the viewer's settings.
        scene: the shared field (with its version and undo history).
        adapter: the calls into the field (queries, prompts, segmentation, edits).
        render_slots: the turns every browser's render thread takes.
        feature_colours: the colour table: the feature PCA colours of a field (None without features).
        modes: the dropdown labels of the modes the run offers (see :data:`frames.LABELS`).
        can_query, can_prompt, can_segment, can_edit: what the run allows.
    """

    config: ViewerConfig
    scene: SharedScene[FeatureField]
    adapter: FieldAdapter
    render_slots: FairSlots
    feature_colours: Callable[[FeatureField], Optional[frames.FeatureColours]]
    modes: Sequence[str]
    can_query: bool
    can_prompt: bool
    can_segment: bool
    can_edit: bool


class ClientSession:
    """The state and widgets of one connected browser."""

    def __init__(self, context: SessionContext, client: "viser.ClientHandle") -> None:
        self.context = context
        self.client = client
        self.config = context.config
        self._lock = threading.Lock()  # guards the fields below
        self._pose: Optional[ViewPose] = None
        self._selection: Optional[Selection] = None  # a prompt's (wins over the query's)
        self._selection_version = -1
        self._selection_source = ""
        self._mask: Optional[np.ndarray] = None
        self._mask_pose: Optional[ViewPose] = None
        self._query_cache: dict = {}
        self._failed_query: Optional[tuple] = None  # the key of a query that raised: not retried
        self._frustum_click: Optional[Tuple[float, float]] = None  # see frustum_clicked
        self._last_error = ""
        self._closed = False
        self.frames = 0
        self._build_gui()
        self.worker: RenderWorker[ViewPose] = RenderWorker(
            self._render, self._render_failed, still_delay=self.config.still_delay, slots=context.render_slots,
            name=f"featgs-render-{client.client_id}")
        self.query_worker: RenderWorker[tuple] = RenderWorker(self._answer_query, self._query_failed,
                                                              name=f"featgs-render-query-{client.client_id}")
        client.camera.on_update(self._camera_moved)
        client.scene.on_click()(self._clicked)  # async: see frustum_clicked
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
            modes = [m for m in frames.MODES if m in self.context.modes]
            self.mode = gui.add_dropdown("Mode", modes, initial_value=modes[0])
            self.legend = gui.add_html("", visible=False)
        with gui.add_folder("Query"):
            self.query = gui.add_text("Query", initial_value="", hint="a label or phrase, e.g. 'red mug'",
                                      disabled=not self.context.can_query)
            self.threshold = gui.add_slider("Threshold", min=0.05, max=0.95, step=0.05,
                                            initial_value=cfg.threshold, disabled=not self.context.can_query)
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
            button.disabled = not self.context.can_edit and button is not self.save

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
    def _camera_moved(self, camera: "viser.CameraHandle") -> None:
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
        if not text or not self.context.can_query:
            return None
        return (text, round(float(self.threshold.value), 4), version)

    def _query_result(self, field: FeatureField, version: int, *, wait: bool = True) -> Optional[QueryAnswer]:
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

    def _run_query_now(self, field: FeatureField, key: tuple) -> QueryAnswer:
        text, threshold, version = key
        hit = self.context.adapter.query(field, text, threshold)
        with self._lock:
            self._query_cache = {key: hit}
        return hit

    def _answer_query(self, key: tuple, moving: bool) -> None:
        """The query thread: run the newest query, then redraw with it."""
        field, version = self.context.scene.snapshot()
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

    def active_selection(self) -> Tuple[Optional[Selection], int, str]:
        """(selection, scene version, where it came from) of what an edit would act on."""
        field, version = self.context.scene.snapshot()
        with self._lock:
            if self._selection is not None and self._selection_version == version:
                return self._selection, version, self._selection_source
        q = self._query_result(field, version)
        if q is not None:
            return q[0], version, f"query '{self.query.value.strip()}'"
        return None, version, ""

    # -- prompts ----------------------------------------------------------------------------
    def _prompt(self, *, point: Optional[Tuple[float, float]] = None,
                box: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None) -> None:
        """Select what a click at ``point`` or a ``box`` (corners) shows; both in canvas fractions."""
        if not self.context.can_prompt:
            raise FeatgsError("this run's Gaussians carry no features: prompts need a feature field")
        with self._lock:
            pose = self._pose
        if pose is None:
            return
        camera = pose.camera(self.config.still_size)
        field, version = self.context.scene.snapshot()
        if point is not None:
            px = (point[0] * camera.width, point[1] * camera.height)
            mask, sel = self.context.adapter.prompt(field, camera, point=px)
            source = "click"
        else:
            (x0, y0), (x1, y1) = box
            bx = (x0 * camera.width, y0 * camera.height, x1 * camera.width, y1 * camera.height)
            mask, sel = self.context.adapter.prompt(field, camera, box=bx)
            source = "box"
        with self._lock:
            self._selection, self._selection_version, self._selection_source = sel, version, source
            self._mask, self._mask_pose = mask, pose
        self.request()

    def frustum_clicked(self, screen_pos: Tuple[float, float]) -> None:
        """A training camera's frustum was clicked at ``screen_pos``: that click is a jump, not a prompt.

        A click on a frustum reaches viser twice: the frustum's own click, then the scene's click
        of the same gesture (the browser sends them in this order, and viser documents the
        scene's ``on_click`` as coming after the node's). Both callbacks are async, so viser runs
        them on its event loop one after the other, in that order: this mark is in place when
        :meth:`_clicked` looks for it, which takes it (and ignores a mark from elsewhere on the
        canvas). Only the browser's own throttle, on two clicks within its 50 ms, can turn the
        order round; then the click also prompts, as a click beside the frustum would.
        """
        with self._lock:
            self._frustum_click = (float(screen_pos[0]), float(screen_pos[1]))

    async def _clicked(self, event: "viser.SceneClickEvent") -> None:
        with self._lock:
            mark, self._frustum_click = self._frustum_click, None
        pos = (float(event.screen_pos[0]), float(event.screen_pos[1]))
        if mark is not None and max(abs(mark[0] - pos[0]), abs(mark[1] - pos[1])) <= SAME_CLICK:
            return  # the frustum's click: the app jumps there
        prompt = self._guarded(functools.partial(self._prompt, point=pos))
        asyncio.get_running_loop().run_in_executor(None, prompt)  # off the event loop: prompts render

    def _boxed(self, event: "viser.SceneRectSelectEvent") -> None:
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
        self.context.scene.apply(lambda f: self.context.adapter.edit(f, sel, op, **kwargs), expect_version=version)
        self._clear_selection(clear_query=True)  # show the result, not a highlight over it
        verb = {"delete": "Deleted", "extract": "Extracted", "recolour": "Recoloured"}[op]
        self.notify(verb, f"{n} Gaussians ({source}). Undo restores them.")

    def _undo(self) -> None:
        if not self.context.scene.undo():
            raise FeatgsError("nothing to undo")

    def _save(self) -> None:
        path = self.context.scene.save()
        self.notify("Saved", f"{path}")

    # -- the render thread ------------------------------------------------------------------
    def _render(self, pose: ViewPose, moving: bool) -> None:
        if self._closed:
            return
        field, version = self.context.scene.snapshot()
        mode = frames.mode_of(self.mode.value)
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
        gaussians = self.context.adapter.gaussians(field)
        if sel is not None and len(sel) and not (mode == "relevancy" and sel_source.startswith("query")):
            overlay.selected = sel.mask()  # (relevancy mode shows the query itself as heat)
        if query is not None:
            overlay.relevancy, overlay.relevancy_range = query[1], query[2]
        frame = frames.draw(gaussians, camera, mode, overlay,
                            feature_colours=self.context.feature_colours(field),
                            segment=(lambda cam: self.context.adapter.segment(field, cam)) if self.context.can_segment else None,
                            label_names=self.context.adapter.label_names(field))
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
            if mode == "segmentation" and frame.legend:
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
