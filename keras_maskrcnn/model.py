"""Model assembly: image -> backbone -> FPN -> RPN -> proposals -> RoIAlign -> heads -> detections.

`architecture` "c4" (the paper's ResNet-C4, Detectron2's `Res5ROIHeads`) instead stops the
backbone at res4: RPN on C4 alone, one RoIAlign on C4, and res5 per RoI feeding both the box
predictor (average-pooled) and the mask branch.

`MaskRCNN` holds the layers once and wires them into two functional graphs that share them:
the inference graph (images -> padded detections with masks) and the training graph, which adds
anchor and RoI targets and the five losses beside the same path. `model.fit` trains the latter;
`model.predict` / `model(inputs)` run the former.
"""

from __future__ import annotations

from collections import OrderedDict

import keras
import tensorflow as tf

from keras_maskrcnn.backbones import build_resnet, resnet_from_config, resnet_spec_from_config
from keras_maskrcnn.backbones.fpn import fpn_from_config
from keras_maskrcnn.config import MaskRCNNConfig, get_config
from keras_maskrcnn.heads import (
    box_head_from_config,
    c4_rpn_head_from_config,
    mask_head_from_config,
    res5_box_head_from_config,
    res5_head_from_config,
    rpn_head_from_config,
)
from keras_maskrcnn.layers.anchors import AnchorGenerator, SingleLevelAnchorGenerator
from keras_maskrcnn.layers.detections import DetectionLayer, MaskSelector
from keras_maskrcnn.layers.losses import BoxHeadLoss, MaskLoss, RPNLoss
from keras_maskrcnn.layers.pooler import MultiLevelRoIAlign, single_level_roi_pooler
from keras_maskrcnn.layers.preprocessing import ImageNormalization
from keras_maskrcnn.layers.proposals import ProposalLayer
from keras_maskrcnn.layers.targets import AnchorTargetLayer, DetectionTargetLayer, gt_mask_spec

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
INFERENCE_INPUTS = ("images", "image_shape")
TRAINING_INPUTS = ("images", "image_shape", "gt_boxes", "gt_classes", "gt_masks", "sample_seed")
REBUILT_CACHE_SIZE = 4
# Box geometry, sampling, targets and losses always run in float32, whatever the dtype policy
# (mixed precision computes only the backbone, FPN and heads in float16 / bfloat16).
FLOAT32 = "float32"



class ExtraGraphs:
    """Graphs built on demand beside the model's own (not a layer or container: Keras would
    save their layers again under other names)."""

    def __init__(self) -> None:
        self.dynamic_fn = None


class RebuiltCache:
    """LRU cache of rebuilt models (at most `REBUILT_CACHE_SIZE`). Not a dict on purpose: Keras
    saves and loads every dict / list attribute of a model, and these are other models."""

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


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskRCNN(keras.Model):
    """Mask R-CNN built from a `MaskRCNNConfig`.

    Inputs (dict): `images [B, H, W, 3]` float32 0..255 on the config's canvas, `image_shape [B, 2]`;
    for training also `gt_boxes [B, G, 4]`, `gt_classes [B, G]`, `gt_masks [B, G, M, M]`
    (docs/CONVENTIONS.md). Inference outputs (dict): `detection_boxes [B, D, 4]` input pixels,
    `detection_scores [B, D]`, `detection_classes [B, D]`, `num_detections [B]`,
    `detection_masks [B, D, M, M]` probabilities, M = `config.mask_resolution` (FPN 28, C4 14).
    """

    def __init__(self, config: MaskRCNNConfig, roi_align_implementation: str = "auto", **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        super().__init__(**kwargs)
        self.config = config
        self.roi_align_implementation = roi_align_implementation
        self._make_layers()
        self.inference_model = self._build_inference_graph()
        self.training_model: keras.Model | None = None
        self._rebuilt_models = RebuiltCache()
        self._weights_version = 0
        self._inference_fn = None
        self._graphs = ExtraGraphs()
        self._finite_version = None
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", *LOSS_NAMES)}
        self.built = True

    def training_graph(self) -> keras.Model:
        """The training graph (targets and losses beside the inference path), built on first use
        and kept as `training_model`: a model loaded for inference never builds it."""
        if self.training_model is None:
            self.training_model = self._build_training_graph()
        return self.training_model

    def compile(self, *args, **kwargs):
        self.training_graph()  # built here, in the caller's strategy scope, not in a trace
        return super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        """Restores the optimizer of a `.keras` file (Keras skips this when `compile` is
        overridden, as here)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def rebuilt(self, roi_align_implementation: str | None = None,
                **config_changes) -> MaskRCNN:
        """This model rebuilt with `config_changes` (e.g. `image_size`: anchors and static shapes
        are constants of the canvas) and/or another RoIAlign implementation, with the same
        weights; `self` when nothing changes.

        Rebuilt models are cached (least recently used first out, at most
        `REBUILT_CACHE_SIZE`) and their weights re-copied whenever this model's weights changed
        since (optimizer steps, `load_weights`).
        """
        implementation = roi_align_implementation or self.roi_align_implementation
        config = self.config.replace(**config_changes) if config_changes else self.config
        if implementation == self.roi_align_implementation and config == self.config:
            return self
        key = (implementation, config.to_json())
        version = self.weights_version()
        entry = self._rebuilt_models.take(key)
        if entry is None:
            entry = [MaskRCNN(config, roi_align_implementation=implementation), None]
        if entry[1] != version:
            entry[0].inference_model.set_weights(self.inference_model.get_weights())
            entry[1] = version
        self._rebuilt_models.put(key, entry)
        return entry[0]

    def inference_function(self):
        """A `tf.function` of the inference graph (traced once per input signature, cached)."""
        if self._inference_fn is None:
            self._inference_fn = tf.function(
                lambda inputs: self.inference_model(inputs, training=False))
        return self._inference_fn

    def dynamic_inference_function(self):
        """A `tf.function` of the shape-polymorphic inference graph (`images [B, H, W, 3]`, any
        H, W multiples of 32; the same layers and weights), traced once for all canvases."""
        if self._graphs.dynamic_fn is None:
            graph = self._build_inference_graph(dynamic=True)
            self._graphs.dynamic_fn = tf.function(
                lambda inputs: graph(inputs, training=False),
                input_signature=[{"images": tf.TensorSpec([None, None, None, 3], tf.float32),
                                  "image_shape": tf.TensorSpec([None, 2], tf.float32)}])
        return self._graphs.dynamic_fn

    def ensure_finite_weights(self) -> None:
        """Raises ValueError if any weight is NaN/Inf (checked once per weights version)."""
        version = self.weights_version()
        if self._finite_version != version:
            require_finite_weights(self)
            self._finite_version = version

    def weights_version(self) -> tuple[int, int]:
        """Changes whenever the weights may have: (loads and sets, optimizer iterations)."""
        steps = int(self.optimizer.iterations.numpy()) if getattr(self, "optimizer", None) \
            is not None else 0
        return (self._weights_version, steps)

    def load_weights(self, *args, **kwargs):
        self._weights_version += 1
        return super().load_weights(*args, **kwargs)

    # -- layers ----------------------------------------------------------------------------------
    def _make_layers(self) -> None:
        c = self.config
        self.normalize = ImageNormalization(c.pixel_mean, c.pixel_std, c.bgr_input,
                                            name="normalize")
        self.backbone = resnet_from_config(c)
        if c.architecture == "c4":
            # Backbone up to res4; every anchor size on C4 (15 per location).
            self.anchor_generator = SingleLevelAnchorGenerator(
                c.strides[0], c.anchor_sizes, c.aspect_ratios, c.anchor_offset, c.round_anchors,
                stride_from_grid=c.anchor_stride_from_grid, name="anchors", dtype=FLOAT32)
            self.rpn_head = c4_rpn_head_from_config(c, name="rpn_head")
        else:
            self.fpn = fpn_from_config(self.backbone, c)
            self.anchor_generator = AnchorGenerator(
                c.strides, c.anchor_sizes, c.aspect_ratios, c.anchor_offset, c.round_anchors,
                stride_from_grid=c.anchor_stride_from_grid, name="anchors", dtype=FLOAT32)
            self.rpn_head = rpn_head_from_config(c, name="rpn_head")
        level_sizes = self.anchor_generator.level_sizes(c.image_size)
        self.train_proposals = ProposalLayer(
            level_sizes, c.rpn_pre_nms_topk_train, c.rpn_post_nms_topk_train,
            c.rpn_nms_threshold, c.rpn_min_box_size, name="train_proposals", dtype=FLOAT32)
        self.test_proposals = ProposalLayer(
            level_sizes, c.rpn_pre_nms_topk_test, c.rpn_post_nms_topk_test,
            c.rpn_nms_threshold, c.rpn_min_box_size, name="test_proposals", dtype=FLOAT32)
        pooler_args = dict(sampling_ratio=c.pooler_sampling_ratio, aligned=c.pooler_aligned,
                           method=c.pooler, canonical_size=c.canonical_box_size,
                           canonical_level=c.canonical_level,
                           implementation=self.roi_align_implementation)
        if c.architecture == "c4":
            # One pooler on C4 for the sampled RoIs / proposals and the detections; res5 per RoI
            # shared by the box predictor and the mask branch (heads/res5_head.py).
            self.roi_pooler = single_level_roi_pooler(c.box_pool_size, c.strides[0],
                                                      name="roi_pooler", **pooler_args)
            self.res5_head = res5_head_from_config(c, name="res5_head")
            self.box_head = res5_box_head_from_config(c, name="box_head")
        else:
            self.box_pooler = MultiLevelRoIAlign(c.box_pool_size, name="box_pooler",
                                                 **pooler_args)
            self.mask_pooler = MultiLevelRoIAlign(c.mask_pool_size, name="mask_pooler",
                                                  **pooler_args)
            self.box_head = box_head_from_config(c, name="box_head")
        self.mask_head = mask_head_from_config(c, name="mask_head")
        self.detection_layer = DetectionLayer(
            c.score_threshold, c.nms_threshold, c.detections_per_image, c.min_detection_size,
            c.box_coder_weights, name="detections", dtype=FLOAT32)
        self.mask_selector = MaskSelector(name="mask_probabilities", dtype=FLOAT32)
        self.anchor_targets = AnchorTargetLayer(
            c.rpn_positive_iou, c.rpn_negative_iou, c.rpn_batch_per_image,
            c.rpn_positive_fraction, quota_rounding=c.sampler_quota_rounding,
            name="anchor_targets", dtype=FLOAT32)
        self.detection_targets = DetectionTargetLayer(
            c.roi_batch_per_image, c.roi_positive_fraction, c.roi_foreground_iou,
            c.box_coder_weights, c.mask_resolution, trim_masks=not self.is_c4,
            quota_rounding=c.sampler_quota_rounding, mask_target_rule=c.mask_target_rule,
            name="detection_targets", dtype=FLOAT32)
        self.rpn_loss = RPNLoss(c.rpn_batch_per_image, c.rpn_box_loss_beta,
                                normalizer=c.rpn_loss_normalizer, name="rpn_loss", dtype=FLOAT32)
        self.box_loss = BoxHeadLoss(c.box_loss_beta, name="box_head_loss", dtype=FLOAT32)
        self.mask_loss = MaskLoss(name="mask_head_loss", dtype=FLOAT32)

    # -- graphs ----------------------------------------------------------------------------------
    def _inputs(self, names, dynamic: bool = False) -> dict[str, keras.KerasTensor]:
        c = self.config
        h, w = (None, None) if dynamic else c.image_size
        m = c.gt_mask_size
        specs = {
            "images": ((h, w, 3), "float32"),
            "image_shape": ((2,), "float32"),
            "gt_boxes": ((c.max_instances, 4), "float32"),
            "gt_classes": ((c.max_instances,), "int32"),
            "gt_masks": ((c.max_instances, m, m), "float32"),
            **gt_mask_spec(c),
            "sample_seed": ((2,), "int32"),
        }
        return {n: keras.Input(specs[n][0], dtype=specs[n][1], name=n) for n in names}

    @property
    def is_c4(self) -> bool:
        """True for `architecture` "c4" (RPN and RoI heads on C4, res5 per RoI)."""
        return self.config.architecture == "c4"

    def _shared_trunk(self, inputs):
        """Features, anchors and RPN outputs: the part both graphs share. Features: P2..P6
        (FPN) or `[C4]` ("c4")."""
        if self.is_c4:
            normalized = self.normalize(inputs["images"], inputs["image_shape"])
            features = [self.backbone(normalized)[-1]]
        else:
            features = self.fpn(self.normalize(inputs["images"], inputs["image_shape"]))
        anchors, level_sizes = self.anchor_generator(inputs["images"], with_level_sizes=True)
        logits, deltas = self.rpn_head(features)
        return features, (anchors, level_sizes), logits, deltas

    def _res5_features(self, features, boxes):
        """C4: res5 `[B, R, P/2, P/2, C5]` of the RoIAlign (P x P) of `boxes` on C4."""
        return self.res5_head(self.roi_pooler(features, boxes))

    def _box_features(self, features, boxes):
        """The box head's input for `boxes`: pooled P2..P5 (FPN) or res5 features (C4)."""
        if self.is_c4:
            return self._res5_features(features, boxes)
        return self.box_pooler(features[:4], boxes)

    def _build_inference_graph(self, dynamic: bool = False) -> keras.Model:
        """The inference graph on the config's canvas, or (`dynamic`) on any canvas whose sides
        are multiples of 32, the anchors then computed in the graph (one graph serves every
        per-image canvas: no rebuild, no retrace)."""
        inputs = self._inputs(INFERENCE_INPUTS, dynamic)
        image_shape = inputs["image_shape"]
        features, (anchors, level_sizes), logits, deltas = self._shared_trunk(inputs)
        proposals, num_proposals = self.test_proposals(
            logits, deltas, anchors, image_shape, level_sizes=level_sizes if dynamic else None)
        class_logits, box_deltas = self.box_head(self._box_features(features, proposals))
        boxes, scores, classes, num = self.detection_layer(
            proposals, num_proposals, class_logits, box_deltas, image_shape)
        if self.is_c4:  # as Detectron2: the detected boxes pooled again and run through res5
            mask_logits = self.mask_head(self._res5_features(features, boxes))
        else:
            mask_logits = self.mask_head(self.mask_pooler(features[:4], boxes))
        masks = self.mask_selector(mask_logits, classes)
        outputs = {"detection_boxes": boxes, "detection_scores": scores,
                   "detection_classes": classes, "num_detections": num, "detection_masks": masks}
        return keras.Model(inputs, outputs, name="dynamic_inference_graph" if dynamic
                           else "inference_graph")

    def _build_training_graph(self) -> keras.Model:
        inputs = self._inputs(TRAINING_INPUTS)
        image_shape = inputs["image_shape"]
        gt_boxes, gt_classes = inputs["gt_boxes"], inputs["gt_classes"]
        features, (anchors, _), logits, deltas = self._shared_trunk(inputs)
        seeds = inputs["sample_seed"]
        labels, rpn_targets = self.anchor_targets(anchors, gt_boxes, gt_classes, seeds)
        rpn_objectness_loss, rpn_box_loss = self.rpn_loss(logits, deltas, labels, rpn_targets)
        proposals, num_proposals = self.train_proposals(logits, deltas, anchors, image_shape)
        t = self.detection_targets(proposals, num_proposals, gt_boxes, gt_classes,
                                   inputs["gt_masks"], seeds, image_shape)
        box_features = self._box_features(features, t["rois"])
        class_logits, box_deltas = self.box_head(box_features)
        class_loss, box_loss = self.box_loss(class_logits, box_deltas, t["class_targets"],
                                             t["box_targets"], t["weights"])
        if self.is_c4:
            # The mask RoIs are the first F sampled slots: their res5 features, not recomputed.
            mask_logits = self.mask_head(box_features[:, :t["mask_rois"].shape[1]])
        else:
            mask_logits = self.mask_head(self.mask_pooler(features[:4], t["mask_rois"]))
        mask_loss = self.mask_loss(mask_logits, t["mask_classes"], t["mask_targets"],
                                   t["mask_weights"])
        outputs = dict(zip(LOSS_NAMES, (rpn_objectness_loss, rpn_box_loss, class_loss, box_loss,
                                        mask_loss), strict=True))
        # Normalizers of the data-dependent means, for exact cross-replica reduction.
        outputs["roi_count"] = keras.ops.sum(t["weights"])
        outputs["mask_count"] = keras.ops.sum(t["mask_weights"])
        outputs["rpn_count"] = keras.ops.sum(keras.ops.cast(labels >= 0, "float32"))
        return keras.Model(inputs, outputs, name="training_graph")

    # -- Keras hooks -----------------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.inference_model({k: inputs[k] for k in INFERENCE_INPUTS}, training=False)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def compute_losses(self, inputs, training: bool = False) -> dict[str, tf.Tensor]:
        """The five named losses and their sum `loss` for one batch (dict of float32 scalars).

        Inside a `tf.distribute` replica context with R > 1 replicas each loss is this replica's
        share of the global-batch loss (normalized by the global anchor, RoI and mask counts), so
        the SUM over replicas is exactly the loss of the global batch on one device, and so are
        the summed gradients. `inputs` may carry `sample_seed [B, 2]` int32 (per-image stateless
        seeds of the RPN and RoI samplers; `make_dataset` provides them); else they are drawn.
        """
        _check_training_inputs(inputs)
        feed = {k: inputs[k] for k in TRAINING_INPUTS if k != "sample_seed"}
        feed["sample_seed"] = inputs["sample_seed"] if "sample_seed" in inputs else \
            tf.random.uniform([tf.shape(inputs["images"])[0], 2], 0, 2**31 - 1, tf.int32)
        out = dict(self.training_graph()(feed, training=training))
        losses = {n: out[n] for n in LOSS_NAMES}
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        if replicas > 1:
            roi = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out["roi_count"])
            mask = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out["mask_count"])
            rpn = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out["rpn_count"])
            for name in ("rpn_objectness_loss", "rpn_box_loss"):
                if self.config.rpn_loss_normalizer == "sampled":
                    losses[name] = losses[name] * tf.maximum(out["rpn_count"], 1.0) / \
                        tf.maximum(rpn, 1.0)
                else:
                    losses[name] = losses[name] / replicas
            for name in ("class_loss", "box_loss"):
                losses[name] = losses[name] * tf.maximum(out["roi_count"], 1.0) / \
                    tf.maximum(roi, 1.0)
            losses["mask_loss"] = losses["mask_loss"] * tf.maximum(out["mask_count"], 1.0) / \
                tf.maximum(mask, 1.0)
        losses["loss"] = tf.add_n([losses[n] for n in LOSS_NAMES])
        return losses

    def train_step(self, data):
        inputs = unpack_batch(data)
        with tf.GradientTape() as tape:
            losses = self.compute_losses(inputs, training=True)
            total = losses["loss"]
            scaled = self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") \
                else total
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        self.optimizer.apply_gradients(pairs)
        return self._update_trackers(losses)

    def test_step(self, data):
        return self._update_trackers(self.compute_losses(unpack_batch(data), training=False))

    def predict_step(self, data):
        return self(unpack_batch(data), training=False)

    def _update_trackers(self, losses):
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name])
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    def get_config(self):
        return {"config": self.config.to_dict(),
                "roi_align_implementation": self.roi_align_implementation}

    @classmethod
    def from_config(cls, config):
        return cls(MaskRCNNConfig.from_dict(config["config"]),
                   config.get("roi_align_implementation", "auto"))


def unpack_batch(data):
    if isinstance(data, tuple | list):
        data = data[0]
    if not isinstance(data, dict):
        raise TypeError(
            "MaskRCNN expects each batch as a dict of tensors (see docs/CONVENTIONS.md), "
            f"got {type(data).__name__}")
    return data


def _check_training_inputs(inputs) -> None:
    missing = [k for k in TRAINING_INPUTS if k not in inputs and k != "sample_seed"]
    if missing:
        raise KeyError(
            f"training batch is missing {missing}; batches from "
            "keras_maskrcnn.data.make_dataset carry every key a training step needs")


def build_model(config: MaskRCNNConfig | str, **overrides) -> MaskRCNN:
    """Builds a Mask R-CNN from a config object, preset name or config JSON path."""
    config = get_config(config, **overrides)
    model = MaskRCNN(config)
    if config.backbone_weights:
        from keras_maskrcnn.backbones.pretrained import load_backbone_weights

        if config.architecture == "c4":
            # The weights are a whole ResNet's: loaded into one, then res2..res4 go to the
            # backbone and res5 to the res5 head (the same layer names).
            full = build_resnet(resnet_spec_from_config(config), config.backbone_norm,
                                config.stride_in_1x1, config.freeze_at)
            load_backbone_weights(full, config)
            for target in (model.backbone, model.res5_head.res5):
                for layer in target.layers:
                    if layer.weights:
                        layer.set_weights(full.get_layer(layer.name).get_weights())
        else:
            load_backbone_weights(model.backbone, config)
    return model


def non_finite_weights(model: MaskRCNN) -> list[str]:
    """Paths of the model's weights that hold NaN or Inf values (empty when all are finite)."""
    return [w.path for w in model.weights
            if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(w.value, tf.float32))))]


def require_finite_weights(model: MaskRCNN, what: str = "model") -> None:
    """Raises ValueError naming the non-finite weights of `model`, if any."""
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(f"the {what} holds non-finite (NaN/Inf) weights in {len(bad)} "
                         f"variable(s), e.g. {', '.join(bad[:3])}: it cannot give meaningful "
                         "detections; use an earlier checkpoint or retrain")


# The model-directory functions moved to `keras_maskrcnn.model_dir`; the old import path
# (`from keras_maskrcnn.model import load_model_dir`, in releases and user code) keeps working.
MOVED_TO_MODEL_DIR = ("CONFIG_FILE", "WEIGHTS_FILE", "CONFIG_ATTRIBUTE", "save_model_dir",
                      "read_model_config", "weights_config", "load_model_dir", "weight_shapes",
                      "expected_weight_shapes", "load_weights_strict", "check_weights_match")


def __getattr__(name: str):
    if name in MOVED_TO_MODEL_DIR:
        from keras_maskrcnn import model_dir

        return getattr(model_dir, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
