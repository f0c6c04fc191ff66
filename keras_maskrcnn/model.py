"""Model assembly: image -> backbone -> FPN -> RPN -> proposals -> RoIAlign -> heads -> detections.

`MaskRCNN` holds the layers once and wires them into two functional graphs that share them:
the inference graph (images -> padded detections with masks) and the training graph, which adds
anchor and RoI targets and the five losses beside the same path. `model.fit` trains the latter;
`model.predict` / `model(inputs)` run the former.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from keras_maskrcnn.backbones import resnet_from_config
from keras_maskrcnn.backbones.fpn_norm import fpn_from_config
from keras_maskrcnn.config import MaskRCNNConfig, get_config
from keras_maskrcnn.heads.conv_heads import (
    box_head_from_config,
    mask_head_from_config,
    rpn_head_from_config,
)
from keras_maskrcnn.layers.anchors import AnchorGenerator
from keras_maskrcnn.layers.detections import DetectionLayer, MaskSelector
from keras_maskrcnn.layers.losses import BoxHeadLoss, MaskLoss, RPNLoss
from keras_maskrcnn.layers.pooler import MultiLevelRoIAlign
from keras_maskrcnn.layers.preprocessing import ImageNormalization
from keras_maskrcnn.layers.proposals import ProposalLayer
from keras_maskrcnn.layers.targets import AnchorTargetLayer, DetectionTargetLayer

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
INFERENCE_INPUTS = ("images", "image_shape")
TRAINING_INPUTS = ("images", "image_shape", "gt_boxes", "gt_classes", "gt_masks")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"


class MaskRCNN(keras.Model):
    """Mask R-CNN built from a `MaskRCNNConfig`.

    Inputs (dict): `images [B, H, W, 3]` float32 0..255 on the config's canvas, `image_shape [B, 2]`;
    for training also `gt_boxes [B, G, 4]`, `gt_classes [B, G]`, `gt_masks [B, G, M, M]`
    (docs/CONVENTIONS.md). Inference outputs (dict): `detection_boxes [B, D, 4]` input pixels,
    `detection_scores [B, D]`, `detection_classes [B, D]`, `num_detections [B]`,
    `detection_masks [B, D, 28, 28]` probabilities.
    """

    def __init__(self, config: MaskRCNNConfig, roi_align_implementation: str = "auto", **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        super().__init__(**kwargs)
        self.config = config
        self.roi_align_implementation = roi_align_implementation
        self._make_layers()
        self.inference_model = self._build_inference_graph()
        self.training_model = self._build_training_graph()
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", *LOSS_NAMES)}
        self.built = True

    # -- layers ----------------------------------------------------------------------------------
    def _make_layers(self) -> None:
        c = self.config
        self.normalize = ImageNormalization(c.pixel_mean, c.pixel_std, c.bgr_input,
                                            name="normalize")
        self.backbone = resnet_from_config(c)
        self.fpn = fpn_from_config(self.backbone, c)
        self.anchor_generator = AnchorGenerator(
            c.strides, c.anchor_sizes, c.aspect_ratios, c.anchor_offset, c.round_anchors,
            stride_from_grid=c.anchor_stride_from_grid, name="anchors")
        self.rpn_head = rpn_head_from_config(c, name="rpn_head")
        level_sizes = self.anchor_generator.level_sizes(c.image_size)
        self.train_proposals = ProposalLayer(
            level_sizes, c.rpn_pre_nms_topk_train, c.rpn_post_nms_topk_train,
            c.rpn_nms_threshold, c.rpn_min_box_size, name="train_proposals")
        self.test_proposals = ProposalLayer(
            level_sizes, c.rpn_pre_nms_topk_test, c.rpn_post_nms_topk_test,
            c.rpn_nms_threshold, c.rpn_min_box_size, name="test_proposals")
        pooler_args = dict(sampling_ratio=c.pooler_sampling_ratio, aligned=c.pooler_aligned,
                           method=c.pooler, canonical_size=c.canonical_box_size,
                           canonical_level=c.canonical_level,
                           implementation=self.roi_align_implementation)
        self.box_pooler = MultiLevelRoIAlign(c.box_pool_size, name="box_pooler", **pooler_args)
        self.mask_pooler = MultiLevelRoIAlign(c.mask_pool_size, name="mask_pooler", **pooler_args)
        self.box_head = box_head_from_config(c, name="box_head")
        self.mask_head = mask_head_from_config(c, name="mask_head")
        self.detection_layer = DetectionLayer(
            c.score_threshold, c.nms_threshold, c.detections_per_image, c.min_detection_size,
            c.box_coder_weights, name="detections")
        self.mask_selector = MaskSelector(name="mask_probabilities")
        self.anchor_targets = AnchorTargetLayer(
            c.rpn_positive_iou, c.rpn_negative_iou, c.rpn_batch_per_image,
            c.rpn_positive_fraction, name="anchor_targets")
        self.detection_targets = DetectionTargetLayer(
            c.roi_batch_per_image, c.roi_positive_fraction, c.roi_foreground_iou,
            c.box_coder_weights, 2 * c.mask_pool_size, name="detection_targets")
        self.rpn_loss = RPNLoss(c.rpn_batch_per_image, c.rpn_box_loss_beta, name="rpn_loss")
        self.box_loss = BoxHeadLoss(c.box_loss_beta, name="box_head_loss")
        self.mask_loss = MaskLoss(name="mask_head_loss")

    # -- graphs ----------------------------------------------------------------------------------
    def _inputs(self, names) -> dict[str, keras.KerasTensor]:
        c = self.config
        h, w = c.image_size
        m = c.gt_mask_size
        specs = {
            "images": ((h, w, 3), "float32"),
            "image_shape": ((2,), "float32"),
            "gt_boxes": ((c.max_instances, 4), "float32"),
            "gt_classes": ((c.max_instances,), "int32"),
            "gt_masks": ((c.max_instances, m, m), "float32"),
        }
        return {n: keras.Input(specs[n][0], dtype=specs[n][1], name=n) for n in names}

    def _shared_trunk(self, inputs):
        """Features, anchors and RPN outputs: the part both graphs share."""
        features = self.fpn(self.normalize(inputs["images"], inputs["image_shape"]))
        anchors = self.anchor_generator(inputs["images"])
        logits, deltas = self.rpn_head(features)
        return features, anchors, logits, deltas

    def _build_inference_graph(self) -> keras.Model:
        inputs = self._inputs(INFERENCE_INPUTS)
        image_shape = inputs["image_shape"]
        features, anchors, logits, deltas = self._shared_trunk(inputs)
        proposals, _, num_proposals = self.test_proposals(logits, deltas, anchors, image_shape)
        class_logits, box_deltas = self.box_head(self.box_pooler(features[:4], proposals))
        boxes, scores, classes, num = self.detection_layer(
            proposals, num_proposals, class_logits, box_deltas, image_shape)
        mask_logits = self.mask_head(self.mask_pooler(features[:4], boxes))
        masks = self.mask_selector(mask_logits, classes)
        outputs = {"detection_boxes": boxes, "detection_scores": scores,
                   "detection_classes": classes, "num_detections": num, "detection_masks": masks}
        return keras.Model(inputs, outputs, name="inference_graph")

    def _build_training_graph(self) -> keras.Model:
        inputs = self._inputs(TRAINING_INPUTS)
        image_shape = inputs["image_shape"]
        gt_boxes, gt_classes = inputs["gt_boxes"], inputs["gt_classes"]
        features, anchors, logits, deltas = self._shared_trunk(inputs)
        labels, rpn_targets = self.anchor_targets(anchors, gt_boxes, gt_classes)
        rpn_objectness_loss, rpn_box_loss = self.rpn_loss(logits, deltas, labels, rpn_targets)
        proposals, _, num_proposals = self.train_proposals(logits, deltas, anchors, image_shape)
        t = self.detection_targets(proposals, num_proposals, gt_boxes, gt_classes,
                                   inputs["gt_masks"])
        class_logits, box_deltas = self.box_head(self.box_pooler(features[:4], t["rois"]))
        class_loss, box_loss = self.box_loss(class_logits, box_deltas, t["class_targets"],
                                             t["box_targets"], t["weights"])
        mask_logits = self.mask_head(self.mask_pooler(features[:4], t["mask_rois"]))
        mask_loss = self.mask_loss(mask_logits, t["mask_classes"], t["mask_targets"],
                                   t["mask_weights"])
        outputs = dict(zip(LOSS_NAMES, (rpn_objectness_loss, rpn_box_loss, class_loss, box_loss,
                                        mask_loss), strict=True))
        return keras.Model(inputs, outputs, name="training_graph")

    # -- Keras hooks -----------------------------------------------------------------------------
    def call(self, inputs, training=False):
        return self.inference_model({k: inputs[k] for k in INFERENCE_INPUTS}, training=False)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def compute_losses(self, inputs, training: bool = False) -> dict[str, tf.Tensor]:
        """The five named losses and their sum `loss` for one batch (dict of scalars)."""
        _check_training_inputs(inputs)
        losses = self.training_model({k: inputs[k] for k in TRAINING_INPUTS}, training=training)
        losses = dict(losses)
        losses["loss"] = tf.add_n([losses[n] for n in LOSS_NAMES])
        return losses

    def train_step(self, data):
        inputs = _unpack(data)
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
        return self._update_trackers(self.compute_losses(_unpack(data), training=False))

    def predict_step(self, data):
        return self(_unpack(data), training=False)

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


def _unpack(data):
    if isinstance(data, tuple | list):
        data = data[0]
    if not isinstance(data, dict):
        raise TypeError(
            "MaskRCNN expects each batch as a dict of tensors (see docs/CONVENTIONS.md), "
            f"got {type(data).__name__}")
    return data


def _check_training_inputs(inputs) -> None:
    missing = [k for k in TRAINING_INPUTS if k not in inputs]
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

        load_backbone_weights(model.backbone, config)
    return model


def save_model_dir(model: MaskRCNN, directory: str | Path) -> Path:
    """Writes a model directory: `config.json` + `model.weights.h5`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.replace(backbone_weights=None).to_json(directory / CONFIG_FILE)
    model.save_weights(str(directory / WEIGHTS_FILE))
    return directory


def load_model_dir(directory: str | Path, roi_align_implementation: str = "auto") -> MaskRCNN:
    """Rebuilds the model of a model directory and loads its weights."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(written by `keras-maskrcnn train --output DIR` or `convert`)")
    config = MaskRCNNConfig.from_json(config_path)
    model = MaskRCNN(config, roi_align_implementation=roi_align_implementation)
    model.load_weights(str(weights_path))
    return model


def count_parameters(model: MaskRCNN) -> int:
    """Trainable + non-trainable weights of the inference graph (BN statistics included)."""
    return int(sum(int(tf.size(w)) for w in model.inference_model.weights))
