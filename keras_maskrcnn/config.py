"""The model configuration: one frozen dataclass, named presets, JSON round trip.

Every number the model, the input pipeline and the trainer use lives here, so that a model directory
(config JSON + weights) rebuilds exactly the model that was trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

CONFIG_VERSION = 2
BACKBONES = ("resnet50", "resnet101", "resnext101_32x8d", "resnext50_32x4d", "resnet_tiny")
# "fpn": FPN over C2..C5, RPN on P2..P6, per-level RoIAlign, box and mask heads on P2..P5.
# "c4": the paper's ResNet-C4 (Detectron2 `Res5ROIHeads`): backbone up to res4, RPN on C4 only,
# one RoIAlign on C4, res5 run per RoI shared by the box predictor and the mask branch.
ARCHITECTURES = ("fpn", "c4")
# Stride of C4 (res4) in input pixels: the C4 architecture's single feature map.
C4_STRIDE = 16
NORMS = ("frozen_bn", "bn", "gn")
POOLERS = ("align", "pool")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine")
# Detectron2's 1x schedule: x0.1 at 60k and 80k of 90k iterations (3x: 210k, 250k of 270k).
DECAY_FRACTIONS_1X = (2.0 / 3.0, 8.0 / 9.0)
MASK_PASTES = ("exact", "torchvision")
MASK_TARGET_RULES = ("detectron2", "torchvision")
RPN_LOSS_NORMALIZERS = ("batch", "sampled")
QUOTA_ROUNDINGS = ("round", "floor")
HEAD_NORMS = ("none", "bn")
# The fields that fix the network and the meaning of its weights: a model directory's
# `config.json` may not change them (every other field is an inference or training setting).
ARCHITECTURE_FIELDS = (
    "num_classes", "pixel_mean", "pixel_std", "bgr_input", "architecture", "backbone",
    "backbone_norm", "stride_in_1x1", "tiny_widths", "fpn_channels", "fpn_norm", "anchor_sizes",
    "aspect_ratios", "anchor_offset", "round_anchors", "anchor_stride_from_grid",
    "rpn_head_convs", "box_coder_weights", "pooler", "pooler_sampling_ratio", "pooler_aligned",
    "box_pool_size", "mask_pool_size", "canonical_box_size", "canonical_level", "box_head_dim",
    "box_head_convs", "box_head_conv_dim", "box_head_fcs", "mask_head_dim", "mask_head_convs",
    "head_norm",
)


@dataclasses.dataclass(frozen=True)
class MaskRCNNConfig:
    """All hyper-parameters of a Mask R-CNN model, its input pipeline and its solver.

    Pixel sizes are in input pixels (the resized image on the model canvas). Defaults are
    Detectron2's R50-FPN defaults (see `../shared/REFERENCE.md`) unless a preset overrides them.
    """

    version: int = CONFIG_VERSION
    name: str = "custom"
    num_classes: int = 80
    class_names: tuple[str, ...] = ()
    # Dataset category id of each label 1..K (e.g. COCO's ids with gaps); empty: labels are ids.
    category_ids: tuple[int, ...] = ()

    # Input: the image is resized so its short side is `min_size` (long side <= `max_size`) and
    # placed top-left on a zero canvas of `image_size` (height, width).
    image_size: tuple[int, int] = (1344, 1344)
    min_size: int = 800
    max_size: int = 1333
    train_min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    horizontal_flip: bool = True
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    bgr_input: bool = False
    # "fixed": every image on the `image_size` canvas (static shapes: XLA, Serving, TFLite).
    # "per_image": `predict_images` pads each image only to a multiple of 32, as torchvision does
    # (one graph per canvas size, built on first use with the same weights).
    canvas: str = "fixed"
    max_instances: int = 100
    gt_mask_size: int = 56

    # Backbone and FPN. `architecture` "c4" uses the backbone up to res4 and res5 as the RoI head
    # (the FPN fields are then unused).
    architecture: str = "fpn"
    backbone: str = "resnet50"
    backbone_norm: str = "frozen_bn"
    stride_in_1x1: bool = False
    freeze_at: int = 2
    backbone_weights: str | None = None
    tiny_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    fpn_channels: int = 256
    # Normalization after the FPN's lateral and output convs ("bn" = BatchNorm, the convs then
    # have no bias: torchvision's maskrcnn_resnet50_fpn_v2).
    fpn_norm: str = "none"

    # Anchors, one size per level P2..P6 ("c4": every size on the single C4 level, each with
    # every aspect ratio).
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.0
    round_anchors: bool = False
    # Shift the anchors of a level by canvas_size // grid_size instead of the nominal stride
    # (torchvision; differs only on P6 when the canvas side is an odd multiple of 32).
    anchor_stride_from_grid: bool = False

    # RPN.
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_topk_train: int = 2000
    rpn_pre_nms_topk_test: int = 1000
    rpn_post_nms_topk_train: int = 1000
    rpn_post_nms_topk_test: int = 1000
    rpn_nms_threshold: float = 0.7
    rpn_min_box_size: float = 0.0
    rpn_box_loss_beta: float = 0.0
    rpn_head_convs: int = 1

    # RoI sampling and heads.
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_foreground_iou: float = 0.5
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    # "c4" pools once, at `box_pool_size` (Detectron2 C4: 14) on C4, for both heads; its masks are
    # `box_pool_size` x `box_pool_size` (res5 halves the pooled size, the mask deconv doubles it).
    pooler: str = "align"
    pooler_sampling_ratio: int = 0
    pooler_aligned: bool = True
    box_pool_size: int = 7
    mask_pool_size: int = 14
    canonical_box_size: float = 224.0
    canonical_level: int = 4
    box_head_dim: int = 1024
    # Box head: `box_head_convs` 3x3 convs of `box_head_conv_dim` (v2: 4), then `box_head_fcs`
    # fully connected layers of `box_head_dim` (v1: 2, v2: 1).
    box_head_convs: int = 0
    box_head_conv_dim: int = 256
    box_head_fcs: int = 2
    mask_head_dim: int = 256
    mask_head_convs: int = 4
    # Normalization after the 3x3 convs of the box and mask heads ("bn" = BatchNorm, no bias).
    head_norm: str = "none"
    box_loss_beta: float = 0.0

    # Inference.
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    min_detection_size: float = 0.0
    mask_threshold: float = 0.5
    # How `inference` pastes the 28x28 masks into the image: "exact" (Detectron2's bilinear
    # grid_sample) or "torchvision" (its integer-box resize, for parity with imported weights).
    mask_paste: str = "exact"

    # Solver (learning rate for `batch_size` images per step, scaled linearly with the actual
    # global batch). The schedule is placed on the run (`solver.schedule_for_run`): x0.1 at each
    # fraction of the total steps ("step"), or a cosine to 0 ("cosine"); warm-up in steps.
    optimizer: str = "sgd"
    learning_rate: float = 0.02
    batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 1000
    lr_schedule: str = "step"
    lr_decay_fractions: tuple[float, ...] = DECAY_FRACTIONS_1X
    clipnorm: float | None = None
    # Repeat-factor sampling threshold T (LVIS / Detectron2; `data.repeat_factor`): images of
    # classes in fewer than a fraction T of the images are repeated; 0 = off (one pass per epoch).
    repeat_factor_threshold: float = 0.0

    # Training-target conventions (docs/CONVENTIONS.md, "Training targets").
    # How the 28x28 mask-head targets are made. "detectron2": RoIAlign (aligned=True, 2x2
    # samples) of the `gt_mask_size` mini mask at the RoI, thresholded at 0.5 (binary).
    # "torchvision": RoIAlign (aligned=False, adaptive samples) of the full-resolution binary
    # mask at the RoI, kept soft (torchvision's `project_masks_on_boxes`); `gt_masks` are then
    # canvas masks `[B, G, H, W]` uint8 (nearest-resized as torchvision's transform does) and
    # `gt_mask_size` is unused.
    mask_target_rule: str = "detectron2"
    # What the two RPN losses are divided by. "batch": `rpn_batch_per_image * B` (Detectron2);
    # "sampled": the number of anchors actually sampled in the batch (torchvision: the mean
    # over sampled anchors), which differs when an image has too few anchors to fill the quota.
    rpn_loss_normalizer: str = "batch"
    # The positive quota of both samplers from `*_batch_per_image * *_positive_fraction`:
    # "round" (half to even) or "floor" (torchvision's `int(...)`).
    sampler_quota_rounding: str = "round"

    def __post_init__(self) -> None:
        self._check_types()
        if self.repeat_factor_threshold < 0:
            raise ValueError("repeat_factor_threshold must be >= 0 (0: off), got "
                             f"{self.repeat_factor_threshold}")
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("backbone_norm", self.backbone_norm, NORMS)
        _check_choice("pooler", self.pooler, POOLERS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if any(not 0.0 < f < 1.0 for f in self.lr_decay_fractions):
            raise ValueError("lr_decay_fractions must lie strictly between 0 and 1 (fractions "
                             f"of the run), got {self.lr_decay_fractions}")
        _check_choice("canvas", self.canvas, ("fixed", "per_image"))
        _check_choice("mask_paste", self.mask_paste, MASK_PASTES)
        _check_choice("mask_target_rule", self.mask_target_rule, MASK_TARGET_RULES)
        _check_choice("rpn_loss_normalizer", self.rpn_loss_normalizer, RPN_LOSS_NORMALIZERS)
        _check_choice("sampler_quota_rounding", self.sampler_quota_rounding, QUOTA_ROUNDINGS)
        _check_choice("fpn_norm", self.fpn_norm, HEAD_NORMS)
        _check_choice("head_norm", self.head_norm, HEAD_NORMS)
        for field in ("rpn_head_convs", "box_head_convs", "box_head_fcs"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"config field {field} must be an int >= 0, got {value!r}")
        if self.rpn_head_convs < 1 or self.box_head_fcs < 1:
            raise ValueError(
                f"rpn_head_convs and box_head_fcs must be >= 1, got {self.rpn_head_convs} and "
                f"{self.box_head_fcs}"
            )
        if len(self.image_size) != 2:
            raise ValueError(f"config field image_size must be [height, width], got "
                             f"{list(self.image_size)}")
        h, w = self.image_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive multiples of 32, got {self.image_size}")
        if self.max_size > max(h, w) or self.min_size > min(h, w):
            raise ValueError(
                f"min_size={self.min_size}/max_size={self.max_size} do not fit the canvas "
                f"image_size={self.image_size}: enlarge image_size or lower the sizes"
            )
        if self.architecture == "fpn" and len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per level P2..P6, got {self.anchor_sizes}")
        if self.architecture == "c4":
            if not self.anchor_sizes:
                raise ValueError("anchor_sizes needs at least one size for the C4 level")
            if self.box_pool_size < 2 or self.box_pool_size % 2:
                raise ValueError(
                    "architecture 'c4' pools once at box_pool_size for the res5 head (stride 2) "
                    f"and needs it even (Detectron2: 14), got {self.box_pool_size}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.category_ids and len(self.category_ids) != self.num_classes:
            raise ValueError(
                f"category_ids must have num_classes = {self.num_classes} entries (one per "
                f"label 1..K), got {len(self.category_ids)}"
            )
        if self.class_names and len(self.class_names) != self.num_classes + 1:
            raise ValueError(
                f"class_names must have num_classes + 1 = {self.num_classes + 1} entries "
                f"(index 0 = background), got {len(self.class_names)}"
            )

    def _check_types(self) -> None:
        """ValueError naming the first field whose value is not of its default's kind (a
        string where a number goes, a number where a list goes, ...); fields defaulting to
        None take anything their use accepts."""
        for field in dataclasses.fields(self):
            value, default = getattr(self, field.name), field.default
            problem = _type_problem(field.name, value, default)
            if problem:
                raise ValueError(f"config field {field.name} must be {problem}, got {value!r}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of the RPN levels in input pixels: P2..P6 (FPN), or C4 alone ("c4")."""
        if self.architecture == "c4":
            return (C4_STRIDE,)
        return (4, 8, 16, 32, 64)

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchor shapes per feature-map location (FPN: one size per level x the ratios;
        "c4": every size x every ratio on the one level, 15 for Detectron2's C4)."""
        if self.architecture == "c4":
            return len(self.anchor_sizes) * len(self.aspect_ratios)
        return len(self.aspect_ratios)

    @property
    def mask_resolution(self) -> int:
        """Side of the predicted (and target) masks: 2 x `mask_pool_size` (FPN, 28), or
        `box_pool_size` ("c4": the mask deconv doubles res5's P / 2 output, 14)."""
        if self.architecture == "c4":
            return self.box_pool_size
        return 2 * self.mask_pool_size

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """Label 1..K -> dataset category id (identity when `category_ids` is empty)."""
        ids = self.category_ids or tuple(range(1, self.num_classes + 1))
        return {label: int(cid) for label, cid in enumerate(ids, start=1)}

    def replace(self, **changes: Any) -> MaskRCNNConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MaskRCNNConfig:
        values = migrate(values)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        version = values.get("version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise ValueError(
                f"config version {version} is newer than this package supports ({CONFIG_VERSION})"
            )
        kwargs = {}
        for key, value in values.items():
            if isinstance(value, list):  # anything else is named by _check_types
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> MaskRCNNConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"config file not found: {path}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object of config fields")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config file {path}: {err}") from None


_STRING_ITEMS = ("class_names",)
_INT_ITEMS = ("category_ids", "image_size", "train_min_sizes", "tiny_widths")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _type_problem(name: str, value: Any, default: Any) -> str | None:
    """What `value` of field `name` should be given its `default`, or None when it fits."""
    if default is None or default is dataclasses.MISSING:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        integral = _is_number(value) and float(value).is_integer()
        return None if integral else "an integer"
    if isinstance(default, float):
        return None if _is_number(value) else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, tuple):
        if not isinstance(value, tuple):
            return "a list"
        if name in _STRING_ITEMS:
            return None if all(isinstance(v, str) for v in value) else "a list of strings"
        if name in _INT_ITEMS:
            ok = all(_is_number(v) and float(v).is_integer() for v in value)
            return None if ok else "a list of integers"
        return None if all(_is_number(v) for v in value) else "a list of numbers"
    return None


def migrate(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict of an older version rewritten for this one (versioned rules, in order).

    Version 1 -> 2: the absolute schedule `lr_decay_steps` of `total_steps` becomes
    `lr_decay_fractions` (fractions of the run).
    """
    values = dict(values)
    version = values.get("version", CONFIG_VERSION)
    if version < 2:
        total = values.pop("total_steps", 90000) or 90000
        steps = values.pop("lr_decay_steps", None)
        if steps is not None:
            values["lr_decay_fractions"] = tuple(
                s / total for s in steps if 0 < s < total)
        values["version"] = 2
    return values


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"config field {field}={value!r} is not one of {choices}")


def _coco_r50_fpn() -> MaskRCNNConfig:
    return MaskRCNNConfig(name="coco_r50_fpn")


def _coco_r101_fpn() -> MaskRCNNConfig:
    return MaskRCNNConfig(name="coco_r101_fpn", backbone="resnet101")


def _coco_x101_fpn() -> MaskRCNNConfig:
    return MaskRCNNConfig(name="coco_x101_32x8d_fpn", backbone="resnext101_32x8d")


def _coco_x50_fpn() -> MaskRCNNConfig:
    return MaskRCNNConfig(name="coco_x50_32x4d_fpn", backbone="resnext50_32x4d")


def _coco_r50_c4() -> MaskRCNNConfig:
    """Detectron2's `mask_rcnn_R_50_C4_1x` (Base-RCNN-C4.yaml over its defaults): RPN on C4 with
    15 anchors per location (sizes 32..512 x ratios 0.5, 1, 2), pre-NMS top 12000 train / 6000
    test, post-NMS 2000 train / 1000 test; RoIAlign 14x14 on C4 (sampling ratio 0, aligned);
    res5 per RoI, average-pooled for the box predictor; mask head with no convs (2x2 deconv 256
    + ReLU + 1x1 on res5's 7x7 output): 14x14 masks."""
    return MaskRCNNConfig(
        name="coco_r50_c4",
        architecture="c4",
        rpn_pre_nms_topk_train=12000,
        rpn_pre_nms_topk_test=6000,
        rpn_post_nms_topk_train=2000,
        rpn_post_nms_topk_test=1000,
        box_pool_size=14,
        mask_head_convs=0,
    )


def _coco_r101_c4() -> MaskRCNNConfig:
    return _coco_r50_c4().replace(name="coco_r101_c4", backbone="resnet101")


def _shapes() -> MaskRCNNConfig:
    """A small, fast configuration for the synthetic shapes set (128x128, trained from scratch)."""
    return MaskRCNNConfig(
        name="shapes",
        num_classes=3,
        class_names=("background", "square", "circle", "triangle"),
        image_size=(128, 128),
        min_size=128,
        max_size=128,
        train_min_sizes=(),
        horizontal_flip=True,
        max_instances=8,
        gt_mask_size=28,
        backbone="resnet_tiny",
        backbone_norm="bn",
        freeze_at=0,
        tiny_widths=(16, 32, 64, 128),
        fpn_channels=64,
        anchor_sizes=(16, 32, 64, 128, 256),
        rpn_pre_nms_topk_train=1000,
        rpn_pre_nms_topk_test=500,
        rpn_post_nms_topk_train=256,
        rpn_post_nms_topk_test=100,
        rpn_batch_per_image=128,
        roi_batch_per_image=64,
        roi_positive_fraction=0.25,
        box_head_dim=256,
        mask_head_dim=32,
        mask_head_convs=2,
        box_loss_beta=0.0,
        detections_per_image=20,
        pooler_sampling_ratio=2,
        optimizer="adamw",
        learning_rate=2e-3,
        batch_size=8,
        weight_decay=1e-4,
        warmup_steps=50,
        lr_decay_fractions=(),
        clipnorm=10.0,
    )


def _torchvision_r50_fpn() -> MaskRCNNConfig:
    """torchvision `maskrcnn_resnet50_fpn` (v1) behaviour, the target of `convert torchvision`.

    Differences from `coco_r50_fpn`: rounded anchors shifted by canvas // grid, RPN boxes
    smaller than 1e-3 and detections smaller than 1e-2 pixels dropped, 2000 post-NMS
    proposals in training, RoIAlign with aligned=False and sampling ratio 2, smooth-L1 beta 1/9,
    torchvision's mask pasting, a single training scale.

    Training targets follow torchvision too, so that fine-tuning a converted model trains as
    torchvision's train mode does (tests/test_training_parity.py): soft mask targets, RoIAlign
    (aligned=False) of the full-resolution masks (`mask_target_rule="torchvision"`: the
    pipeline then carries canvas-sized masks, G x H x W bytes per image); RPN losses divided by
    the anchors actually sampled (`rpn_loss_normalizer="sampled"`); positive quotas
    `int(batch * fraction)` (`sampler_quota_rounding="floor"`).
    """
    return MaskRCNNConfig(
        name="torchvision_r50_fpn",
        canvas="per_image",
        train_min_sizes=(800,),
        freeze_at=2,
        round_anchors=True,
        anchor_stride_from_grid=True,
        rpn_post_nms_topk_train=2000,
        rpn_min_box_size=1e-3,
        rpn_box_loss_beta=1.0 / 9.0,
        pooler_sampling_ratio=2,
        pooler_aligned=False,
        box_loss_beta=1.0 / 9.0,
        min_detection_size=1e-2,
        mask_paste="torchvision",
        mask_target_rule="torchvision",
        rpn_loss_normalizer="sampled",
        sampler_quota_rounding="floor",
    )


def _torchvision_r50_fpn_v2() -> MaskRCNNConfig:
    """torchvision `maskrcnn_resnet50_fpn_v2`: v1 plus BatchNorm in the FPN and the heads, two
    RPN convs, a box head of four 3x3 convs and one fc (Li et al. 2021, arXiv:2111.11429)."""
    return _torchvision_r50_fpn().replace(
        name="torchvision_r50_fpn_v2",
        fpn_norm="bn",
        rpn_head_convs=2,
        box_head_convs=4,
        box_head_fcs=1,
        head_norm="bn",
    )


PRESETS = {
    "coco_r50_fpn": _coco_r50_fpn,
    "coco_r101_fpn": _coco_r101_fpn,
    "coco_x101_32x8d_fpn": _coco_x101_fpn,
    "coco_x50_32x4d_fpn": _coco_x50_fpn,
    "coco_r50_c4": _coco_r50_c4,
    "coco_r101_c4": _coco_r101_c4,
    "shapes": _shapes,
    "torchvision_r50_fpn": _torchvision_r50_fpn,
    "torchvision_r50_fpn_v2": _torchvision_r50_fpn_v2,
}


def get_config(name_or_path: str | Path | MaskRCNNConfig, **overrides: Any) -> MaskRCNNConfig:
    """A preset by name, or a config JSON file by path, with `overrides` applied."""
    if isinstance(name_or_path, MaskRCNNConfig):
        config = name_or_path
    elif str(name_or_path) in PRESETS:
        config = PRESETS[str(name_or_path)]()
    elif Path(name_or_path).suffix == ".json" or Path(name_or_path).exists():
        config = MaskRCNNConfig.from_json(name_or_path)
    else:
        raise ValueError(
            f"unknown config {name_or_path!r}: use a preset ({', '.join(PRESETS)}) "
            "or the path of a config JSON file"
        )
    return config.replace(**overrides) if overrides else config
