"""The one place a `MaskRCNNConfig` becomes a model: each part's layers made with keyword
arguments from the config's fields, then `MaskRCNN(normalizer, backbone, rpn, roi_heads)`.

`build_model(config)` builds. The same weights elsewhere: `model_for_canvas(model, canvas)`
on another canvas (the same parts, so the same variables; anchors and static shapes are
constants of the canvas), `rebuilt(model, ...)` in another dtype policy or RoIAlign
implementation (new layers, the weights copied); both cached per model here, never on the
model. Nothing below this module reads a config.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator

import keras

from keras_maskrcnn.backbones import build_fpn, build_resnet, stage_channels, tiny_spec
from keras_maskrcnn.backbones.pretrained import load_backbone_weights
from keras_maskrcnn.backbones.resnet import RESNET_SPECS, ResNetSpec
from keras_maskrcnn.config import MaskRCNNConfig, get_config
from keras_maskrcnn.heads import BoxHead, MaskHead, Res5BoxHead, Res5Head, RPNHead
from keras_maskrcnn.layers.anchors import AnchorGenerator, SingleLevelAnchorGenerator
from keras_maskrcnn.layers.detections import DetectionLayer, MaskSelector
from keras_maskrcnn.layers.losses import BoxHeadLoss, MaskLoss, RPNLoss
from keras_maskrcnn.layers.pooler import MultiLevelRoIAlign, single_level_roi_pooler
from keras_maskrcnn.layers.preprocessing import ImageNormalization
from keras_maskrcnn.layers.proposals import ProposalLayer
from keras_maskrcnn.layers.targets import AnchorTargetLayer, DetectionTargetLayer
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.parts import RPN, Backbone, Res5RoIHeads, StandardRoIHeads

# Box geometry, sampling, targets and losses always run in float32, whatever the dtype policy
# (mixed precision computes only the backbone, FPN and heads in float16 / bfloat16).
FLOAT32 = "float32"
REBUILT_CACHE_SIZE = 4
# The RoI heads of the FPN pool from P2..P5 (P6 feeds the RPN only).
FPN_POOLER_LEVELS = 4


def build_model(config: MaskRCNNConfig | str, roi_align_implementation: str = "auto",
                **overrides) -> MaskRCNN:
    """A Mask R-CNN from a config object, preset name or config JSON path (`overrides`
    applied), with `config.backbone_weights` loaded when set."""
    config = get_config(config, **overrides)
    is_c4 = config.architecture == "c4"
    model = MaskRCNN(normalizer=build_normalizer(config), backbone=build_backbone(config),
                     rpn=build_rpn(config),
                     roi_heads=build_roi_heads(config, roi_align_implementation),
                     config=config, roi_align_implementation=roi_align_implementation)
    if config.backbone_weights:
        if is_c4:
            _load_c4_backbone_weights(model, config)
        else:
            _load_backbone_weights(model.backbone.body, config)
    return model


def resnet_spec(config: MaskRCNNConfig) -> ResNetSpec:
    """The `ResNetSpec` named by `config.backbone` (`tiny_widths` for resnet_tiny)."""
    if config.backbone == "resnet_tiny":
        return tiny_spec(config.tiny_widths)
    return RESNET_SPECS[config.backbone]


def build_normalizer(config: MaskRCNNConfig) -> ImageNormalization:
    return ImageNormalization(mean=config.pixel_mean, std=config.pixel_std,
                              bgr=config.bgr_input, name="normalizer")


def build_backbone(config: MaskRCNNConfig) -> Backbone:
    """ResNet C2..C5 + FPN (P2..P6), or ResNet up to res4 for "c4" (features `[C4]`)."""
    spec = resnet_spec(config)
    c4 = config.architecture == "c4"
    body = build_resnet(spec, norm=config.backbone_norm, stride_in_1x1=config.stride_in_1x1,
                        freeze_at=config.freeze_at, last_stage=4 if c4 else 5, name="body")
    fpn = None if c4 else build_fpn(
        in_channels=[stage_channels(spec, level) for level in range(2, 6)],
        channels=config.fpn_channels, norm=config.fpn_norm, name="fpn")
    return Backbone(body=body, fpn=fpn, name="backbone")


def build_rpn(config: MaskRCNNConfig) -> RPN:
    c = config
    if c.architecture == "c4":  # every anchor size on C4 (15 per location), C4's channels
        anchors = SingleLevelAnchorGenerator(
            stride=c.strides[0], sizes=c.anchor_sizes, aspect_ratios=c.aspect_ratios,
            offset=c.anchor_offset, round_base=c.round_anchors,
            stride_from_grid=c.anchor_stride_from_grid, name="anchors", dtype=FLOAT32)
        channels = stage_channels(resnet_spec(c), 4)
    else:
        anchors = AnchorGenerator(
            strides=c.strides, sizes=c.anchor_sizes, aspect_ratios=c.aspect_ratios,
            offset=c.anchor_offset, round_base=c.round_anchors,
            stride_from_grid=c.anchor_stride_from_grid, name="anchors", dtype=FLOAT32)
        channels = c.fpn_channels
    level_sizes = anchors.level_sizes(c.image_size)

    def proposals(pre: int, post: int, name: str) -> ProposalLayer:
        return ProposalLayer(level_sizes, pre_nms_topk=pre, post_nms_topk=post,
                             nms_threshold=c.rpn_nms_threshold, min_box_size=c.rpn_min_box_size,
                             name=name, dtype=FLOAT32)

    return RPN(
        anchor_generator=anchors,
        head=RPNHead(num_anchors=c.num_anchors_per_location, channels=channels,
                     num_convs=c.rpn_head_convs, name="head"),
        train_proposals=proposals(c.rpn_pre_nms_topk_train, c.rpn_post_nms_topk_train,
                                  "train_proposals"),
        test_proposals=proposals(c.rpn_pre_nms_topk_test, c.rpn_post_nms_topk_test,
                                 "test_proposals"),
        anchor_targets=AnchorTargetLayer(
            positive_iou=c.rpn_positive_iou, negative_iou=c.rpn_negative_iou,
            batch_per_image=c.rpn_batch_per_image, positive_fraction=c.rpn_positive_fraction,
            quota_rounding=c.sampler_quota_rounding, name="anchor_targets", dtype=FLOAT32),
        criterion=RPNLoss(batch_per_image=c.rpn_batch_per_image, beta=c.rpn_box_loss_beta,
                          normalizer=c.rpn_loss_normalizer, name="criterion", dtype=FLOAT32),
        name="rpn")


def _head_layers(config: MaskRCNNConfig, trim_masks: bool) -> dict:
    """The layers both RoI heads end with: detections, mask selection, targets, losses."""
    c = config
    return dict(
        detection_layer=DetectionLayer(
            score_threshold=c.score_threshold, nms_threshold=c.nms_threshold,
            max_detections=c.detections_per_image, min_box_size=c.min_detection_size,
            box_coder_weights=c.box_coder_weights, name="detections", dtype=FLOAT32),
        mask_selector=MaskSelector(name="mask_probabilities", dtype=FLOAT32),
        detection_targets=DetectionTargetLayer(
            batch_per_image=c.roi_batch_per_image, positive_fraction=c.roi_positive_fraction,
            foreground_iou=c.roi_foreground_iou, box_coder_weights=c.box_coder_weights,
            mask_size=c.mask_resolution, trim_masks=trim_masks,
            quota_rounding=c.sampler_quota_rounding, mask_target_rule=c.mask_target_rule,
            name="detection_targets", dtype=FLOAT32),
        box_criterion=BoxHeadLoss(beta=c.box_loss_beta, name="box_criterion", dtype=FLOAT32),
        mask_criterion=MaskLoss(name="mask_criterion", dtype=FLOAT32))


def build_roi_heads(config: MaskRCNNConfig, roi_align_implementation: str = "auto"):
    """`StandardRoIHeads` (FPN) or `Res5RoIHeads` ("c4")."""
    c = config
    pooler_args = dict(sampling_ratio=c.pooler_sampling_ratio, aligned=c.pooler_aligned,
                       method=c.pooler, canonical_size=c.canonical_box_size,
                       canonical_level=c.canonical_level,
                       implementation=roi_align_implementation)
    mask_head = MaskHead(num_classes=c.num_classes, conv_dim=c.mask_head_dim,
                         num_convs=c.mask_head_convs, norm=c.head_norm, name="mask_head")
    if c.architecture == "c4":
        return Res5RoIHeads(
            pooler=single_level_roi_pooler(c.box_pool_size, c.strides[0], name="pooler",
                                           **pooler_args),
            res5_head=Res5Head(spec=resnet_spec(c), norm=c.backbone_norm,
                               stride_in_1x1=c.stride_in_1x1, trainable=c.freeze_at < 5,
                               name="res5_head"),
            box_head=Res5BoxHead(num_classes=c.num_classes, name="box_head"),
            mask_head=mask_head, name="roi_heads", **_head_layers(c, trim_masks=False))
    return StandardRoIHeads(
        box_pooler=MultiLevelRoIAlign(c.box_pool_size, name="box_pooler", **pooler_args),
        mask_pooler=MultiLevelRoIAlign(c.mask_pool_size, name="mask_pooler", **pooler_args),
        box_head=BoxHead(num_classes=c.num_classes, conv_dim=c.box_head_conv_dim,
                         num_convs=c.box_head_convs, fc_dim=c.box_head_dim,
                         num_fcs=c.box_head_fcs, norm=c.head_norm, name="box_head"),
        mask_head=mask_head, pooler_levels=FPN_POOLER_LEVELS, name="roi_heads",
        **_head_layers(c, trim_masks=True))


def _load_backbone_weights(body: keras.Model, config: MaskRCNNConfig) -> None:
    load_backbone_weights(body, config.backbone_weights, config.backbone,
                          keras_applications_layout=config.bgr_input and config.stride_in_1x1)


def _load_c4_backbone_weights(model: MaskRCNN, config: MaskRCNNConfig) -> None:
    """The weights are a whole ResNet's: loaded into one, then res2..res4 go to the backbone
    and res5 to the res5 head (the same layer names)."""
    full = build_resnet(resnet_spec(config), norm=config.backbone_norm,
                        stride_in_1x1=config.stride_in_1x1, freeze_at=config.freeze_at)
    _load_backbone_weights(full, config)
    for target in (model.backbone.body, model.roi_heads.res5_head.res5):
        for layer in target.layers:
            if layer.weights:
                layer.set_weights(full.get_layer(layer.name).get_weights())


# -- the same weights on another canvas, RoIAlign implementation or precision ------------------
class RebuiltCache:
    """LRU cache of one model's rebuilt models: key -> [model, weights version copied]."""

    def __init__(self, size: int = REBUILT_CACHE_SIZE) -> None:
        self.size = size
        self.entries: OrderedDict[tuple, list] = OrderedDict()

    def take(self, key: tuple) -> list | None:
        return self.entries.pop(key, None)

    def put(self, key: tuple, entry: list) -> None:
        self.entries[key] = entry
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


_REBUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def rebuilt_cache(model: MaskRCNN) -> RebuiltCache:
    """The cache of `model`'s rebuilt models (held here, dropped with the model)."""
    cache = _REBUILT.get(model)
    if cache is None:
        cache = _REBUILT[model] = RebuiltCache()
    return cache


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Sets Keras' global dtype policy inside the block (layers built there take it)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def model_policy(model: MaskRCNN) -> str:
    """The dtype policy the model's heads compute in ("float32", "mixed_bfloat16", ...)."""
    return model.rpn.head.dtype_policy.name


def keep_boxes_float32(model: MaskRCNN) -> None:
    """RoIAlign reads its boxes in float32 under a mixed policy (inference models): the
    poolers' autocast is switched off (read by `Layer.__call__` on every call)."""
    for layer in model.roi_heads._flatten_layers():
        if isinstance(layer, MultiLevelRoIAlign):
            layer.autocast = False


def rebuilt(model: MaskRCNN, roi_align_implementation: str | None = None,
            policy: str | None = None, **config_changes) -> MaskRCNN:
    """`model` rebuilt with `config_changes` (e.g. `image_size`), another RoIAlign
    implementation and/or another dtype `policy` (default: the model's own), with the same
    weights; `model` itself when nothing changes.

    Rebuilt models are cached per model (least recently used first out, at most
    `REBUILT_CACHE_SIZE`) and their weights copied again whenever the model's weights changed
    since (optimizer steps, `load_weights`).
    """
    implementation = roi_align_implementation or model.roi_align_implementation
    config = model.config.replace(**config_changes) if config_changes else model.config
    own_policy = model_policy(model)
    policy = policy or own_policy
    if implementation == model.roi_align_implementation and config == model.config \
            and policy == own_policy:
        return model
    key = (implementation, policy, config.to_json())
    cache = rebuilt_cache(model)
    entry = cache.take(key)
    if entry is None:
        with dtype_policy(policy):
            other = build_model(config.replace(backbone_weights=None),
                                roi_align_implementation=implementation)
        if policy != FLOAT32:
            keep_boxes_float32(other)
        entry = [other, None]
    version = model.weights_version()
    if entry[1] != version:
        entry[0].inference_graph().set_weights(model.inference_graph().get_weights())
        entry[1] = version
    cache.put(key, entry)
    return entry[0]


def model_for_canvas(model: MaskRCNN, canvas: tuple[int, int]) -> MaskRCNN:
    """`model` on the canvas (H, W) (multiples of 32; its resize sizes capped to fit), sharing
    every part, and so every variable, with `model`: no weights are copied and none go stale.
    Only the RPN's proposal layers, which hold the per-level anchor counts of one canvas and no
    weights, are made anew. Per-image inference off TensorFlow and every exporter's canvas
    (`export.buckets`) go through here; cached per model like `rebuilt`."""
    canvas = (int(canvas[0]), int(canvas[1]))
    c = model.config
    if canvas == tuple(c.image_size):
        return model
    key = ("canvas", canvas)
    cache = rebuilt_cache(model)
    entry = cache.take(key)
    if entry is None:
        config = c.replace(image_size=canvas, min_size=min(c.min_size, min(canvas)),
                           max_size=min(c.max_size, max(canvas)))
        level_sizes = model.rpn.anchor_generator.level_sizes(canvas)
        rpn = model.rpn.replaced(**{
            name: _proposals_for(getattr(model.rpn, name), level_sizes, canvas)
            for name in ("train_proposals", "test_proposals")})
        entry = [MaskRCNN(model.normalizer, model.backbone, rpn, model.roi_heads, config=config,
                          roi_align_implementation=model.roi_align_implementation), None]
    cache.put(key, entry)
    return entry[0]


def _proposals_for(layer: ProposalLayer, level_sizes, canvas: tuple[int, int]) -> ProposalLayer:
    """A copy of a proposal layer with the anchor counts of another canvas."""
    config = layer.get_config()
    config.update(level_sizes=level_sizes, name=f"{layer.name}_{canvas[0]}x{canvas[1]}")
    return type(layer).from_config(config)
