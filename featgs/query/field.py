"""``FeatureField``: a trained run, loaded for language queries, prompts, masks and edits.

    field = FeatureField.load("out/demo/run")
    mug = field.query("cup")                      # Selection: ids, bbox, centroid
    cam = field.camera(0)                         # test view 0
    heat = field.render(cam, "relevancy", text="cup")
    mask, apple = field.prompt(cam, points=[[70, 52]])
    field.edit(mug, Delete()).save("no_mug.ply")

A field never changes: edits return a new one. It may be shared across threads: its
operations run one at a time under a lock that a field shares with the fields its edits make
(they share the text encoder and the embedding cache), so callers need no lock of their own.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.device import resolve_device
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, save_ply
from featgs.pictures import FeaturePCA
from featgs.query.clean import CleanConfig, clean_selection, hidden_behind, spread
from featgs.query.edit import EditOp, apply_edit
from featgs.query.features import FeatureSpace
from featgs.query.modes import RenderMode, check_mode, mode_image
from featgs.query.lift import lift_mask, render_values, selection_share
from featgs.query.prompt import MaskDecoder, Prompt, PromptConfig, SamMaskDecoder, affinity_select
from featgs.query.relevancy import QueryConfig, negatives_or_default, pairwise_relevancy, select_by_rule
from featgs.query.selection import Selection
from featgs.render import BYTES_PER_PAIR, estimate_pairs
from featgs.render import render as render_view
from featgs.render.budget import tile_count
from featgs.run import Run
from featgs.teachers.base import Teacher

MAX_TEXT = 500  # characters in one query or label text
_TEXT_CACHE = 1024  # embeddings kept per field
_SELECTION_CACHE = 256  # text-query selections kept per field
_LIFT_TOP_K = 16
# (tile, Gaussian) pairs one render may list where callers choose the camera (featgs serve's
# default): ~BYTES_PER_PAIR bytes each, 20M is ~2 GB, which a 2-core, 24 GB machine serving a
# run can spare while it also holds the run and its clients.
MAX_RENDER_PAIRS = 20_000_000


Channels = Tuple[int, int]
_T = TypeVar("_T")


class RenderTooLarge(FeatgsError):
    """A render that would need more memory than the field's ``max_render_pairs`` allows."""


def _one_at_a_time(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a FeatureField operation under the field's lock (caches, encoder, renderer)."""
    @functools.wraps(method)
    def locked(self: "FeatureField", *args, **kwargs) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


@dataclass(frozen=True)
class FeatureField:
    """Gaussians with features, and what querying them needs.

    A run distilled from several teachers renders their features side by side (channels
    ``[start, end)`` each, see :mod:`featgs.train.blocks`); each use takes its teacher's block.

    Attributes:
        gaussians: the scene (features d-dim, decoder to the teachers' D-dim space).
        encoder: the run's language-aligned teacher (``encode_text``), or None: no text queries.
        model_id: the weights the text block was distilled from (checked against the encoder's
            before the first text is embedded), or None to skip the check.
        text_channels: the encoder's block of the decoded features (None: all of them).
        prompt_channels: the block that feature-affinity prompts compare (None: all).
        label_names: the run's label names, distinct, in label-id order (may be empty).
        train_cameras, test_cameras: the run's views (empty when its data folder is gone).
        mask_decoder: SAM-style decoder for prompts (see :class:`MaskDecoder`), or None.
        decoder_channels: the mask decoder's block (None: all).
        root: the run folder, when loaded from one.
        no_text_reason: why ``encoder`` is None, for the error a text query gets.
        normalization: [4, 4] float64 similarity from the dataset's frame (its camera poses)
            to the field's (the run's normalised frame, the PLY's), or None when they are one.
            Everything here works in the field's frame; :meth:`describe` adds the dataset's.
        max_render_pairs: (tile, Gaussian) pairs a render at a caller's camera may list, or
            None for no limit (the default: a program or the shell renders what it asks for).
            The renderer's memory grows with them (about :data:`featgs.render.BYTES_PER_PAIR`
            bytes each: a 2048x2048 view of large Gaussians can take tens of GB, with the
            field's lock held), so with a limit, operations refuse a camera over it with
            :class:`RenderTooLarge` before they allocate (see :meth:`check_render_size`).
            ``featgs serve`` sets :data:`MAX_RENDER_PAIRS` unless told otherwise.
    """

    gaussians: Gaussians
    encoder: Optional[Teacher] = None
    model_id: Optional[str] = None
    text_channels: Optional[Channels] = None
    prompt_channels: Optional[Channels] = None
    label_names: Tuple[str, ...] = ()
    train_cameras: Tuple[Camera, ...] = ()
    test_cameras: Tuple[Camera, ...] = ()
    mask_decoder: Optional[MaskDecoder] = None
    decoder_channels: Optional[Channels] = None
    root: Optional[Path] = None
    no_text_reason: str = "the run's teacher is not language-aligned (or it has none)"
    normalization: Optional[Tensor] = None
    max_render_pairs: Optional[int] = None
    _texts: Dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # Text queries are pure functions of the (immutable) field, so their selections are kept;
    # not an init field, so the new fields that edits make start empty.
    _selections: Dict[tuple, Tuple[Tensor, float, str]] = field(default_factory=dict, init=False, repr=False,
                                                                compare=False)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, run: "str | Path | Run", *, mask_decoder: Optional[MaskDecoder] = None,
             sam_checkpoint: Optional[str | Path] = None,
             device: Optional[str | torch.device] = None,
             max_render_pairs: Optional[int] = None) -> "FeatureField":
        """The field of a run folder made by ``featgs train``.

        Args:
            mask_decoder: a decoder for prompts, for runs with a block of its teacher's features.
            sam_checkpoint: for runs with a SAM block and no ``mask_decoder``: prompts go
                through SAM's decoder with these weights (default: the checkpoint the run was
                trained with, if it is still there; without one, prompts use feature affinity).
            device: where to render (default: CUDA when available, else CPU).
            max_render_pairs: see the attribute (None: no limit; ``featgs serve`` passes
                :data:`MAX_RENDER_PAIRS`).
        Raises:
            FeatgsError: not a finished run, or a decoder for a teacher the run lacks.
        """
        from featgs.teachers import make_teacher

        if max_render_pairs is not None and (isinstance(max_render_pairs, bool) or not isinstance(max_render_pairs, int)
                                             or max_render_pairs < 1):
            raise FeatgsError(f"max_render_pairs must be a whole number >= 1 (or None), got {max_render_pairs!r}")
        run = run if isinstance(run, Run) else Run.open(run)
        root = run.root
        options = run.teacher_options
        device = resolve_device("auto" if device is None else device)
        g = run.gaussians(device)
        blocks = run.teacher_channels
        whole = lambda ch: None if ch == (0, g.output_feature_dim) else ch  # noqa: E731
        encoder = text = None
        reason = "the run has no language-aligned teacher (labels or clip): it cannot answer text queries"
        for name, channels in blocks.items():
            try:
                teacher = make_teacher(name, options)
            except FeatgsError as e:  # e.g. a CLIP checkpoint that has moved since training
                if name == "clip":
                    reason = f"the run's clip teacher cannot be rebuilt for text queries: {e}"
                continue
            if teacher.language_aligned:
                encoder, text = teacher, name
                break
        if sam_checkpoint is not None and ("sam" not in blocks or not Path(sam_checkpoint).is_file()):
            raise FeatgsError(f"--sam-checkpoint {sam_checkpoint}: " + ("not a file" if "sam" in blocks else
                              f"run {root} has no SAM features ({', '.join(blocks) or 'no teacher'})"))
        if mask_decoder is None and "sam" in blocks:
            path = sam_checkpoint or options.sam_checkpoint
            if path is not None and Path(path).is_file():
                mask_decoder = SamMaskDecoder(Path(path), model=options.sam_model, device=device)
        if mask_decoder is not None and mask_decoder.teacher not in blocks:
            raise FeatgsError(f"{root}: a {mask_decoder.teacher} mask decoder needs a run distilled from "
                              f"{mask_decoder.teacher} features; this one has {', '.join(blocks) or 'no teacher'}")
        names = tuple(dict.fromkeys(run.label_names.values()))
        cameras = run.cameras()
        first = next(iter(blocks.values()), None)
        return cls(gaussians=g, encoder=encoder, model_id=run.model_ids.get(text),
                   text_channels=whole(blocks[text]) if text else None,
                   prompt_channels=whole(blocks[text] if text else first) if first else None,
                   label_names=names, train_cameras=cameras["train"], test_cameras=cameras["test"],
                   mask_decoder=mask_decoder,
                   decoder_channels=whole(blocks[mask_decoder.teacher]) if mask_decoder is not None else None,
                   root=root, no_text_reason=reason, normalization=run.normalization,
                   max_render_pairs=max_render_pairs)

    # -- basics -------------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return len(self.gaussians)

    @functools.cached_property
    def space(self) -> FeatureSpace:
        """The per-Gaussian features in the text encoder's space (computed on first use)."""
        return FeatureSpace.of(self.gaussians, self.text_channels)

    @functools.cached_property
    def prompt_space(self) -> FeatureSpace:
        """The per-Gaussian features that affinity prompts compare."""
        if self.prompt_channels == self.text_channels:
            return self.space
        return FeatureSpace.of(self.gaussians, self.prompt_channels)

    def camera(self, index: int, split: str = "test") -> Camera:
        """View ``index`` of the run's ``split`` ("test" or "train")."""
        if split not in ("test", "train"):
            raise FeatgsError(f"split must be 'test' or 'train', got {split!r}")
        cams = self.test_cameras if split == "test" else self.train_cameras
        if not cams:
            raise FeatgsError(f"this run has no {split} views (is its data folder gone?); give an explicit camera")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cams):
            raise FeatgsError(f"{split} view index must be an integer in 0..{len(cams) - 1}, got {index!r}")
        return cams[index]

    @_one_at_a_time
    def embed(self, texts: Sequence[str]) -> Tensor:
        """[n, D] unit embeddings of ``texts`` in the features' space (cached per field)."""
        if self.encoder is None:
            raise FeatgsError(self.no_text_reason)
        texts = list(texts)
        if not texts:
            raise FeatgsError("no texts to embed")
        for t in texts:
            if not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT:
                raise FeatgsError(f"texts must be non-empty strings of at most {MAX_TEXT} characters, got {t!r:.80}")
        found = {t: self._texts[t] for t in texts if t in self._texts}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            if not self._texts and self.model_id and self.encoder.model_id != self.model_id:
                raise FeatgsError(f"the run's features were distilled with {self.model_id}; the installed text "
                                  f"encoder is {self.encoder.model_id}, whose embeddings do not match")
            found.update(zip(missing, self.encoder.encode_text(missing).float().cpu()))
        for t in dict.fromkeys(texts):  # least recently used first: the negatives of every query stay
            self._texts.pop(t, None)
            self._texts[t] = found[t]
        while len(self._texts) > _TEXT_CACHE:
            self._texts.pop(next(iter(self._texts)))
        out = torch.stack([found[t] for t in texts])
        if out.shape[1] != self.space.dim:
            raise FeatgsError(f"text embeddings are {out.shape[1]}-dim but the run renders {self.space.dim}-dim features")
        return out

    # -- text queries -------------------------------------------------------------------------
    @_one_at_a_time
    def relevancy(self, text: str, negatives: Optional[Sequence[str]] = None, *, temperature: float = 0.1) -> Tensor:
        """[N] relevancy of every Gaussian to ``text`` (see :mod:`featgs.query.relevancy`)."""
        negs = negatives_or_default(negatives)
        cos = self.space.cosine(self.embed([text, *negs]))
        return pairwise_relevancy(cos[:, 0], cos[:, 1:], temperature)

    @_one_at_a_time
    def query(self, text: str, negatives: Optional[Sequence[str]] = None, *,
              config: QueryConfig = QueryConfig(), cleaning: CleanConfig = CleanConfig()) -> Selection:
        """The Gaussians that ``text`` names.

        Args:
            negatives: phrases the text competes against (default
                :data:`~featgs.query.relevancy.DEFAULT_NEGATIVES`; empty: plain cosine).
            config: threshold rule and its parameter; ``cleaning``: see :mod:`featgs.query.clean`.
        """
        rule = config.resolved_rule(bool(self.label_names))
        negs = negatives_or_default(negatives)
        key = (text, tuple(negs), config, cleaning)
        if key in self._selections:
            keep, threshold, rule = self._selections[key]
            return Selection.from_mask(self.gaussians.means, keep, threshold=threshold, rule=rule, text=text)
        vecs = self.embed([text, *negs])
        cos = self.space.cosine(vecs)
        r = pairwise_relevancy(cos[:, 0], cos[:, 1:], config.temperature)
        labels = self.embed(self.label_names) if rule == "labels" else None
        keep, threshold = select_by_rule(
            rule, r, cos[:, 0], config, negatives=bool(negs),
            query_to_labels=None if labels is None else labels @ vecs[0],
            cos_labels=None if labels is None else (lambda idx: self.space.cosine(labels[idx])))
        keep = keep.cpu()
        if config.clean:
            keep = clean_selection(self.gaussians, keep, self._carving_cameras(), cleaning)
        if len(self._selections) >= _SELECTION_CACHE:
            self._selections.pop(next(iter(self._selections)))
        self._selections[key] = (keep, float(threshold), rule)
        return Selection.from_mask(self.gaussians.means, keep, threshold=float(threshold), rule=rule, text=text)

    @_one_at_a_time
    def clean(self, selection: Selection, config: CleanConfig = CleanConfig()) -> Selection:
        """``selection`` without floaters and with the Gaussians it hides (for edits)."""
        keep = clean_selection(self.gaussians, self._mask_of(selection), self._carving_cameras(), config)
        return Selection.from_mask(self.gaussians.means, keep, threshold=selection.threshold,
                                   rule=selection.rule, text=selection.text)

    @_one_at_a_time
    def describe(self, selection: Selection, *, with_ids: bool = False) -> dict:
        """JSON-ready summary of ``selection`` (see :meth:`Selection.to_dict`): its box and
        centroid in the field's frame and, when the run was normalised, under ``dataset_frame``
        the same in the frame of the dataset's camera poses (where a robot looks for the mug)."""
        out = selection.to_dict(with_ids=with_ids)
        if self.normalization is not None and len(selection):
            from featgs.data.scene import transform_points

            to_dataset = torch.linalg.inv(self.normalization.to(torch.float64))
            pts = transform_points(to_dataset, self.gaussians.means.detach()[selection.ids.to(self.gaussians.device)]
                                   .cpu().double())
            out["dataset_frame"] = {"bbox": [pts.min(0).values.tolist(), pts.max(0).values.tolist()],
                                    "centroid": pts.mean(0).tolist()}
        return out

    def from_dataset_frame(self, camera: Camera) -> Camera:
        """``camera`` posed in the dataset's frame (e.g. a pose from its transforms.json or a
        robot's), moved into the field's frame, where it renders and prompts."""
        if self.normalization is None:
            return camera
        from featgs.data.normalize import transform_camera

        return transform_camera(self.normalization, camera)

    def _carving_cameras(self) -> Tuple[Camera, ...]:
        return self.train_cameras or self.test_cameras

    def _mask_of(self, selection: Selection) -> Tensor:
        if not isinstance(selection, Selection):
            raise FeatgsError(f"expected a Selection, got {type(selection).__name__}")
        if selection.num_gaussians != self.num_gaussians:
            raise FeatgsError(f"the selection indexes {selection.num_gaussians} Gaussians; this field has "
                              f"{self.num_gaussians} (it was made on another field)")
        return selection.mask()

    # -- views --------------------------------------------------------------------------------
    # Each public operation at a caller's camera checks the render's size once, under the lock,
    # then works through the unchecked _methods (the same Gaussians at the same camera).
    @_one_at_a_time
    def check_render_size(self, camera: Camera) -> int:
        """The (tile, Gaussian) pairs a render at ``camera`` lists (0 when it is surely within
        the limit without projecting: fewer Gaussians times tiles than the limit).

        Raises:
            RenderTooLarge: over ``max_render_pairs``; the message gives the estimate and the
                memory it would take.
        """
        limit = self.max_render_pairs
        if limit is None:
            return 0
        if self.num_gaussians * tile_count(camera) <= limit:
            return 0
        pairs = estimate_pairs(self.gaussians, camera)
        if pairs > limit:
            raise RenderTooLarge(
                f"a {camera.width}x{camera.height} view of this run's {self.num_gaussians} Gaussians would list "
                f"{pairs / 1e6:.1f}M (tile, Gaussian) pairs, about {pairs * BYTES_PER_PAIR / 1e9:.1f} GB, over the "
                f"limit of {limit / 1e6:g}M (max_render_pairs; featgs serve --max-render-pairs); ask for a "
                f"smaller view")
        return pairs

    @_one_at_a_time
    def relevancy_map(self, camera: Camera, text: str, negatives: Optional[Sequence[str]] = None) -> Tensor:
        """[H, W] relevancy at each pixel: the per-Gaussian relevancy rendered as a 1-dim feature."""
        self.check_render_size(camera)
        return self._relevancy_map(camera, text, negatives)

    def _relevancy_map(self, camera: Camera, text: str, negatives: Optional[Sequence[str]]) -> Tensor:
        out = render_values(self.gaussians, camera, self.relevancy(text, negatives))
        return (out.features[..., 0] / out.alpha[..., 0].clamp_min(1e-10)).cpu()

    @_one_at_a_time
    def mask(self, camera: Camera, selection: Selection, *, min_share: float = 0.5) -> Tensor:
        """[H, W] bool: pixels where the selection holds at least ``min_share`` of the blend weight."""
        self.check_render_size(camera)
        return self._mask(camera, selection, min_share)

    def _mask(self, camera: Camera, selection: Selection, min_share: float = 0.5) -> Tensor:
        return (selection_share(self.gaussians, camera, self._mask_of(selection)) >= min_share).cpu()

    @_one_at_a_time
    def segment(self, camera: Camera, labels: Optional[Sequence[str]] = None) -> Tensor:
        """[H, W] int64 index into ``labels`` (default: the run's label names) of each pixel's
        most similar label text: the argmax of cosine between the rendered feature and the texts."""
        labels = self._labels_or_default(labels)
        self.check_render_size(camera)
        return self._segment(camera, labels)

    def _segment(self, camera: Camera, labels: List[str]) -> Tensor:
        text = self.embed(labels)
        g = self.gaussians
        out = render_view(g.with_features(g.features, None), camera, features=True, sh_degree=0)
        # decoded . t is linear in the rendered d-dim feature, and the argmax of a cosine over
        # unit texts does not depend on the pixel's norm: score in d dims, never build [H, W, D].
        return self.space.dots(out.features, text).argmax(dim=-1).cpu()

    def _labels_or_default(self, labels: Optional[Sequence[str]]) -> List[str]:
        if isinstance(labels, str):
            raise FeatgsError("labels must be a list of texts, not one string")
        labels = list(self.label_names if labels is None else labels)
        if not labels:
            raise FeatgsError("segmentation needs label texts: this run has no label names, so pass some")
        if len(set(labels)) != len(labels):
            raise FeatgsError("labels must be distinct texts")
        return labels

    @torch.no_grad()
    @_one_at_a_time
    def render(self, camera: Camera, mode: RenderMode = "rgb", *, text: Optional[str] = None,
               labels: Optional[Sequence[str]] = None, selection: Optional[Selection] = None,
               negatives: Optional[Sequence[str]] = None) -> Tensor:
        """[H, W, 3] float picture in 0..1 of one view.

        Modes: ``rgb``; ``depth`` (turbo, near = warm); ``features`` (a fixed PCA of the
        features to RGB, shared by all views); ``relevancy`` (heat map of ``text``: 0.5, no
        better than the negatives, is blue; 1 is red); ``segmentation`` (``labels`` or the run's
        label names, coloured by :func:`featgs.pictures.palette`); ``selection`` (the colour
        image, dimmed outside ``selection``'s mask). The pictures are :mod:`featgs.query.modes`'.
        """
        mode = check_mode(mode)
        g = self.gaussians
        out, needs = None, {}
        if mode == "relevancy":
            if text is None:
                raise FeatgsError("relevancy rendering needs a text")
            self.check_render_size(camera)
            lo = 0.5 if negatives_or_default(negatives) else 0.0
            needs = dict(relevancy=self._relevancy_map(camera, text, negatives), relevancy_range=(lo, 1.0))
        elif mode == "segmentation":
            labels = self._labels_or_default(labels)
            self.check_render_size(camera)
            needs = dict(labels=self._segment(camera, labels), num_labels=len(labels))
        elif mode == "features":
            self.check_render_size(camera)
            full = self._full_space
            out = render_view(g.with_features(g.features, None), camera, features=True, sh_degree=0)
            # PCA of the decoded feature, computed on the d-dim render: (W f + b - mean) @ basis.
            needs = dict(pca=self._pca, pca_coords=self._pca.project(out.features, full.weight, full.bias))
        else:
            if mode == "selection" and selection is None:
                raise FeatgsError("selection rendering needs a selection")
            self.check_render_size(camera)
            out = render_view(g, camera, features=False)
            if mode == "selection":
                needs = dict(inside=self._mask(camera, selection))
        return mode_image(mode, out, **needs)

    @functools.cached_property
    def _full_space(self) -> FeatureSpace:
        return FeatureSpace.of(self.gaussians)

    @functools.cached_property
    def _pca(self) -> FeaturePCA:
        # the fit the viewer's feature colours use too (featgs.viewer.frames), so they match
        return FeaturePCA.fit_gaussians(self.gaussians)

    # -- 2D <-> 3D ----------------------------------------------------------------------------
    @torch.no_grad()
    @_one_at_a_time
    def lift(self, camera: Camera, mask: Tensor, *, min_share: float = 0.5) -> Selection:
        """The Gaussians with at least ``min_share`` of their blend weight at ``camera`` inside
        ``mask`` [H, W] bool (from the render's top-16 weights per pixel)."""
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != (camera.height, camera.width):
            raise FeatgsError(f"mask must be a bool [{camera.height}, {camera.width}] array for this camera, "
                              f"got {mask.dtype} {tuple(mask.shape)}")
        self.check_render_size(camera)
        return self._lift(camera, mask, min_share)

    def _lift(self, camera: Camera, mask: Tensor, min_share: float = 0.5) -> Selection:
        out = render_view(self.gaussians, camera, features=False, sh_degree=0, top_k=_LIFT_TOP_K)
        keep = lift_mask(out, mask, self.num_gaussians, min_share=min_share)
        return Selection.from_mask(self.gaussians.means, keep, threshold=min_share, rule="mask")

    @torch.no_grad()
    @_one_at_a_time
    def prompt(self, camera: Camera, points: Optional[Sequence] = None, point_labels: Optional[Sequence] = None,
               box: Optional[Sequence] = None, *, config: PromptConfig = PromptConfig(),
               cleaning: CleanConfig = CleanConfig()) -> Tuple[Tensor, Selection]:
        """The object at clicked ``points`` [[x, y], ...] (pixels; ``point_labels`` 1 = on it,
        0 = not on it) and/or inside ``box`` [x0, y0, x1, y1], at ``camera``.

        Returns:
            mask [H, W] bool (CPU), and the selection (whole objects, hidden Gaussians included).
        """
        p = Prompt.make(camera.width, camera.height, points, point_labels, box)
        self.check_render_size(camera)
        if self.mask_decoder is not None:
            return self._decoder_prompt(camera, p, config, cleaning)
        keep = affinity_select(self.gaussians, self.prompt_space, camera, p, config)
        if config.clean:
            cams = spread(self._carving_cameras(), cleaning.views, cleaning.size)
            keep = keep | hidden_behind(self.gaussians, keep, cams, alpha=cleaning.alpha)
        rule = "point" if bool((p.point_labels == 1).any()) else "box"
        sel = Selection.from_mask(self.gaussians.means, keep, threshold=config.affinity, rule=rule)
        mask = self._mask(camera, sel)
        box_mask = p.box_mask(camera.width, camera.height)
        return (mask if box_mask is None else mask & box_mask), sel

    def _decoder_prompt(self, camera: Camera, p: Prompt, config: PromptConfig,
                        cleaning: CleanConfig) -> Tuple[Tensor, Selection]:
        out = render_view(self.gaussians, camera, features=True)
        feats = out.features if self.decoder_channels is None else out.features[..., slice(*self.decoder_channels)]
        mask = torch.as_tensor(self.mask_decoder(feats, points=p.points if len(p.points) else None,
                                                 point_labels=p.point_labels if len(p.points) else None, box=p.box)).cpu()
        if mask.dtype != torch.bool or tuple(mask.shape) != (camera.height, camera.width):
            raise FeatgsError(f"the mask decoder returned {mask.dtype} {tuple(mask.shape)}; expected bool "
                              f"[{camera.height}, {camera.width}]")
        sel = self._lift(camera, mask)
        if config.clean:
            sel = self.clean(sel, cleaning)
        return mask, replace(sel, rule="decoder")

    # -- edits --------------------------------------------------------------------------------
    @_one_at_a_time
    def edit(self, selection: Selection, op: EditOp) -> "FeatureField":
        """A new field with ``op`` (:class:`~featgs.query.edit.Delete`, ``Extract``,
        ``Recolor(rgb)``, ``Translate(offset)``) applied to ``selection``."""
        return replace(self, gaussians=apply_edit(self.gaussians, self._mask_of(selection), op))

    @_one_at_a_time
    def save(self, path: str | Path, *, decoded: bool = False) -> Path:
        """Write the Gaussians as a standard 3DGS PLY with ``feat_*`` properties; returns the path.

        Args:
            decoded: False: the stored d-dim features, with the decoder beside the PLY as
                ``NAME.decoder.safetensors`` (small; readers need both files). True: the
                features decoded to the teachers' D dims and no decoder: one self-contained
                file (N x D floats), e.g. to hand to a program that has only the PLY.
        """
        path = Path(path)
        if path.suffix.lower() != ".ply":
            raise FeatgsError(f"{path}: expected a .ply file name")
        g = self.gaussians
        if decoded and g.decoder is not None:
            g = g.with_features(self._decoded_features(), None)
        save_ply(path, g)
        return path

    def _decoded_features(self) -> Tensor:
        """[N, D] decoded features, decoded in blocks of Gaussians (no [N, D] temporaries)."""
        g = self.gaussians
        out = torch.empty(len(g), g.output_feature_dim, dtype=g.features.dtype, device=g.device)
        for start in range(0, len(g), 1 << 15):
            out[start:start + (1 << 15)] = g.decoder(g.features[start:start + (1 << 15)].detach())
        return out

    def ply_bytes(self, *, decoded: bool = False) -> int:
        """About how large :meth:`save` writes the PLY (bytes), for refusing one too large."""
        g = self.gaussians
        dims = 3 + 3 + 3 + 3 * g.shN.shape[1] + 1 + 3 + 4
        dims += g.output_feature_dim if decoded else g.feature_dim
        return len(g) * dims * 4
