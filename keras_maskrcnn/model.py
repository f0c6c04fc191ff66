"""Model assembly: image -> backbone -> RPN -> proposals -> RoI heads -> detections.

`MaskRCNN(normalizer, backbone, rpn, roi_heads)` wires its parts (`keras_maskrcnn.parts`) into two
functional graphs that share every layer: the inference graph (images -> padded detections with
masks) and the training graph, which adds the RPN's and the RoI heads' targets and losses beside
the same path. `model.fit` trains the latter; `model.predict` / `model(inputs)` run the former.
It holds no architecture switch: FPN or C4 is the choice of backbone and RoI heads that
`keras_maskrcnn.builder.build_model(config)` makes from a config.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_maskrcnn import backend
from keras_maskrcnn.config import MaskRCNNConfig
from keras_maskrcnn.parts.roi_heads import OUTPUT_NAMES
from keras_maskrcnn.steps import (
    finite_weights,
    guard,
    guarded_train_step,
    loss_scale,
    unpack_batch,
)

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
INFERENCE_INPUTS = ("images", "image_shape")
TRAINING_INPUTS = ("images", "image_shape", "gt_boxes", "gt_classes", "gt_masks", "sample_seed")


class Graphs:
    """The functional graphs wired over the parts (not a layer or container: Keras would track
    and save their layers again under other paths)."""

    def __init__(self) -> None:
        self.inference = None
        self.training = None
        self.dynamic_fn = None
        self.inference_fn = None


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskRCNN(keras.Model):
    """Mask R-CNN assembled from parts.

    Args:
        normalizer: `(images, image_shape)` -> normalized images, padding zeroed
            (`layers.preprocessing.ImageNormalization`).
        backbone: normalized images -> list of feature maps (`parts.Backbone`).
        rpn: `parts.RPN`.
        roi_heads: `parts.StandardRoIHeads` or `parts.Res5RoIHeads` (or any part with their
            `detect` / `training_losses` entry points).
        config: the `MaskRCNNConfig` the parts were built from: its canvas (`image_size`), resize
            rule, thresholds and class names drive the input pipeline, inference and exports.
        roi_align_implementation: the RoIAlign implementation the poolers were built with.

    Inputs (dict): `images [B, H, W, 3]` float32 0..255 on the config's canvas, `image_shape [B, 2]`;
    for training also `gt_boxes [B, G, 4]`, `gt_classes [B, G]`, `gt_masks [B, G, M, M]`
    (docs/CONVENTIONS.md). Inference outputs (dict): `detection_boxes [B, D, 4]` input pixels,
    `detection_scores [B, D]`, `detection_classes [B, D]`, `num_detections [B]`,
    `detection_masks [B, D, M, M]` probabilities, M = `config.mask_resolution` (FPN 28, C4 14).
    """

    def __init__(self, normalizer, backbone, rpn, roi_heads, config: MaskRCNNConfig,
                 roi_align_implementation: str = "auto", **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        super().__init__(**kwargs)
        self.config = config
        self.roi_align_implementation = roi_align_implementation
        self.normalizer = normalizer
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self._graphs = Graphs()
        self._graphs.inference = self._build_inference_graph()
        self._weights_version = 0
        self._finite_version = None
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", *LOSS_NAMES)}
        self.built = True

    def inference_graph(self) -> keras.Model:
        """The inference graph on the config's canvas (a functional model over the parts; a
        method, not an attribute, so that weight files address the layers by their parts)."""
        return self._graphs.inference

    @property
    def training_model(self) -> keras.Model | None:
        """The training graph once built (`training_graph`), else None."""
        return self._graphs.training

    def training_graph(self) -> keras.Model:
        """The training graph (targets and losses beside the inference path), built on first use:
        a model loaded for inference never builds it."""
        if self._graphs.training is None:
            self._graphs.training = self._build_training_graph()
        return self._graphs.training

    def compile(self, *args, **kwargs) -> None:
        """Keras's `compile`, with the training graph and the optimizer's slots built here, in
        the caller's strategy scope: slots created in the first trace of `fit` make TensorFlow
        trace the training step twice (measured: the first `fit` call of a tiny model, 17 s ->
        11 s)."""
        self.training_graph()
        super().compile(*args, **kwargs)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        """Restores the optimizer of a `.keras` file (Keras skips this when `compile` is
        overridden, as here)."""
        self.compile(**keras.saving.deserialize_keras_object(config))

    def inference_function(self):
        """The inference graph as a compiled function of a dict of arrays (cached): a
        `tf.function` on TensorFlow, `jax.jit` of the stateless call on JAX (weights read at
        each call, so loads and training steps are seen), the eager graph on PyTorch."""
        if self._graphs.inference_fn is None:
            self._graphs.inference_fn = _compiled_inference(self.inference_graph())
        return self._graphs.inference_fn

    def dynamic_inference_function(self):
        """A `tf.function` of the shape-polymorphic inference graph (`images [B, H, W, 3]`, any
        H, W multiples of 32; the same layers and weights), traced once for all canvases."""
        if self._graphs.dynamic_fn is None:
            tf = backend.tensorflow()
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
        steps = int(ops.convert_to_numpy(self.optimizer.iterations)) \
            if getattr(self, "optimizer", None) is not None else 0
        return (self._weights_version, steps)

    def load_weights(self, *args, **kwargs):
        self._weights_version += 1
        return super().load_weights(*args, **kwargs)

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
            # mini masks, or canvas masks for torchvision's mask targets (docs/CONVENTIONS.md)
            "gt_masks": ((c.max_instances, *c.image_size), "uint8")
            if c.mask_target_rule == "torchvision" else ((c.max_instances, m, m), "float32"),
            "sample_seed": ((2,), "int32"),
        }
        return {n: keras.Input(specs[n][0], dtype=specs[n][1], name=n) for n in names}

    def _trunk(self, inputs):
        """Feature maps and the RPN's outputs: the part both graphs share."""
        features = self.backbone(self.normalizer(inputs["images"], inputs["image_shape"]))
        return features, self.rpn.predict(inputs["images"], features)

    def _build_inference_graph(self, dynamic: bool = False) -> keras.Model:
        """The inference graph on the config's canvas, or (`dynamic`) on any canvas whose sides
        are multiples of 32, the anchors then computed in the graph (one graph serves every
        per-image canvas: no rebuild, no retrace)."""
        inputs = self._inputs(INFERENCE_INPUTS, dynamic)
        features, rpn_outputs = self._trunk(inputs)
        proposals, num_proposals = self.rpn.proposals(rpn_outputs, inputs["image_shape"],
                                                      dynamic=dynamic)
        outputs = self.roi_heads.detect(features, proposals, num_proposals, inputs["image_shape"])
        return keras.Model(inputs, {n: outputs[n] for n in OUTPUT_NAMES},
                           name="dynamic_inference_graph" if dynamic else "inference_graph")

    def _build_training_graph(self) -> keras.Model:
        inputs = self._inputs(TRAINING_INPUTS)
        gt = (inputs["gt_boxes"], inputs["gt_classes"])
        seeds = inputs["sample_seed"]
        features, rpn_outputs = self._trunk(inputs)
        outputs = self.rpn.training_losses(rpn_outputs, *gt, seeds)
        proposals, num_proposals = self.rpn.proposals(rpn_outputs, inputs["image_shape"],
                                                      training=True)
        outputs.update(self.roi_heads.training_losses(features, proposals, num_proposals, *gt,
                                                      inputs["gt_masks"], seeds,
                                                      inputs["image_shape"]))
        # Losses, then the normalizers of the data-dependent means (cross-replica reduction).
        names = (*LOSS_NAMES, "rpn_count", "roi_count", "mask_count")
        return keras.Model(inputs, {n: outputs[n] for n in names}, name="training_graph")

    # -- Keras hooks -----------------------------------------------------------------------------
    def call(self, inputs, training=False):
        """Inference outputs; with `training=True` and a training batch (ground truth in
        `inputs`), the training graph's losses and counts (the forward pass of `train_step`)."""
        if training and "gt_boxes" in inputs:
            return self.training_outputs(inputs, training=True)
        return self.inference_graph()({k: inputs[k] for k in INFERENCE_INPUTS}, training=False)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def training_outputs(self, inputs, training: bool = False) -> dict:
        """The training graph's outputs for a batch: the five losses and the normalizers of
        their means (`rpn_count`, `roi_count`, `mask_count`)."""
        _check_training_inputs(inputs)
        feed = {k: inputs[k] for k in TRAINING_INPUTS if k != "sample_seed"}
        feed["sample_seed"] = inputs["sample_seed"] if "sample_seed" in inputs else \
            draw_sample_seeds(inputs["images"])
        return dict(self.training_graph()(feed, training=training))

    def compute_losses(self, inputs, training: bool = False) -> dict:
        """The five named losses and their sum `loss` for one batch (dict of float32 scalars).

        Inside a `tf.distribute` replica context with R > 1 replicas each loss is this replica's
        share of the global-batch loss (normalized by the global anchor, RoI and mask counts), so
        the SUM over replicas is exactly the loss of the global batch on one device, and so are
        the summed gradients (JAX's data parallelism needs no such step: its batch is global).
        `inputs` may carry `sample_seed [B, 2]` int32 (per-image stateless seeds of the RPN and
        RoI samplers; `make_dataset` provides them); else they are drawn (TensorFlow only).
        """
        out = self.training_outputs(inputs, training=training)
        losses = {n: out[n] for n in LOSS_NAMES}
        if backend.is_tensorflow():
            losses = self._replica_shares(losses, out)
        losses["loss"] = sum_losses(losses)
        return losses

    def _replica_shares(self, losses: dict, out: dict) -> dict:
        """`tf.distribute`: each loss as this replica's share of the global batch's loss."""
        tf = backend.tensorflow()
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        if replicas == 1:
            return losses
        roi = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out["roi_count"])
        mask = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out["mask_count"])
        rpn = ctx.all_reduce(tf.distribute.ReduceOp.SUM, out["rpn_count"])
        for name in ("rpn_objectness_loss", "rpn_box_loss"):
            if self.rpn.criterion.normalizer == "sampled":
                losses[name] = losses[name] * tf.maximum(out["rpn_count"], 1.0) / \
                    tf.maximum(rpn, 1.0)
            else:
                losses[name] = losses[name] / replicas
        for name in ("class_loss", "box_loss"):
            losses[name] = losses[name] * tf.maximum(out["roi_count"], 1.0) / \
                tf.maximum(roi, 1.0)
        losses["mask_loss"] = losses["mask_loss"] * tf.maximum(out["mask_count"], 1.0) / \
            tf.maximum(mask, 1.0)
        return losses

    def loss_and_gradients(self, inputs) -> tuple[dict, list]:
        """The losses of one training batch (`compute_losses`) and the gradients of their sum,
        scaled by the optimizer's loss scale (mixed_float16), w.r.t. `trainable_variables` (None
        for a variable the losses do not reach): the one gradient computation of `fit`
        (`train_step`) and of `training.train`'s guarded step (TensorFlow; `train_step` on JAX
        and PyTorch differentiates the same `compute_losses`)."""
        tf = backend.tensorflow()
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.compute_losses(inputs, training=True)
            scaled = self.optimizer.scale_loss(losses["loss"])
        return losses, tape.gradient(scaled, variables)

    def train_step(self, *args):
        """One optimizer step (`fit`), guarded like `training.train`'s on every backend: a
        non-finite loss or gradient leaves the weights as they were, and the logs carry
        `grad_norm`, `finite_loss`, `finite_grads` and `finite_weights` beside the losses
        (`keras_maskrcnn.steps`; JAX calls `train_step(state, data)`, functional)."""
        if not backend.is_tensorflow():
            return guarded_train_step(self, *args)
        (data,) = args
        losses, grads = self.loss_and_gradients(unpack_batch(data))
        pairs = [(g, v) for g, v in zip(grads, self.trainable_variables, strict=True)
                 if g is not None]
        guarded, flags = guard(losses, [g for g, _ in pairs], loss_scale(self.optimizer))
        self.optimizer.apply_gradients(zip(guarded, [v for _, v in pairs], strict=True))
        flags["finite_weights"] = finite_weights([v.value for v in self.trainable_variables])
        return {**self.update_loss_trackers(losses), **flags}

    def test_step(self, data):
        return self.update_loss_trackers(self.compute_losses(unpack_batch(data), training=False))

    def predict_step(self, data):
        return self(unpack_batch(data), training=False)

    def update_loss_trackers(self, losses: dict) -> dict:
        """Adds a step's losses to the trackers; their means (the logs of `fit`)."""
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name])
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    def get_config(self):
        parts = {name: keras.saving.serialize_keras_object(getattr(self, name))
                 for name in ("normalizer", "backbone", "rpn", "roi_heads")}
        return {**parts, "config": self.config.to_dict(),
                "roi_align_implementation": self.roi_align_implementation}

    @classmethod
    def from_config(cls, config):
        parts = {name: keras.saving.deserialize_keras_object(config[name])
                 for name in ("normalizer", "backbone", "rpn", "roi_heads")}
        return cls(**parts, config=MaskRCNNConfig.from_dict(config["config"]),
                   roi_align_implementation=config.get("roi_align_implementation", "auto"))


def _check_training_inputs(inputs) -> None:
    missing = [k for k in TRAINING_INPUTS if k not in inputs and k != "sample_seed"]
    if missing:
        raise KeyError(
            f"training batch is missing {missing}; batches from "
            "keras_maskrcnn.data.make_dataset carry every key a training step needs")


def sum_losses(losses: dict):
    """The total loss: the sum of the five named losses."""
    total = losses[LOSS_NAMES[0]]
    for name in LOSS_NAMES[1:]:
        total = total + losses[name]
    return total


def draw_sample_seeds(images):
    """Per-image sampler seeds `[B, 2]` int32 for a batch that brings none (TensorFlow's
    stateful RNG; other backends need the batch's own `sample_seed`, as `make_dataset` gives)."""
    if not backend.is_tensorflow():
        raise ValueError(
            "a training batch needs `sample_seed` [B, 2] int32 (the samplers' per-image seeds) "
            f"on the {backend.name()} backend; batches from keras_maskrcnn.data.make_dataset "
            "carry it")
    tf = backend.tensorflow()
    return tf.random.uniform([tf.shape(images)[0], 2], 0, 2**31 - 1, tf.int32)


def _compiled_inference(graph: keras.Model):
    """A compiled call of `graph` on a dict of arrays (see `MaskRCNN.inference_function`)."""
    if backend.is_tensorflow():
        tf = backend.tensorflow()
        return tf.function(lambda inputs: graph(inputs, training=False))
    if backend.name() == "jax":
        import jax

        jitted = jax.jit(lambda trainable, non_trainable, inputs: graph.stateless_call(
            trainable, non_trainable, inputs, training=False)[0])

        def run(inputs):
            return jitted([v.value for v in graph.trainable_variables],
                          [v.value for v in graph.non_trainable_variables], inputs)
        return run

    def run_eager(inputs):
        import torch

        with torch.no_grad():
            return graph(inputs, training=False)
    return run_eager


def non_finite_weights(model: MaskRCNN) -> list[str]:
    """Paths of the model's weights that hold NaN or Inf values (empty when all are finite)."""
    return [w.path for w in model.weights
            if not bool(ops.all(ops.isfinite(ops.cast(w.value, "float32"))))]


def require_finite_weights(model: MaskRCNN, what: str = "model") -> None:
    """Raises ValueError naming the non-finite weights of `model`, if any."""
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(f"the {what} holds non-finite (NaN/Inf) weights in {len(bad)} "
                         f"variable(s), e.g. {', '.join(bad[:3])}: it cannot give meaningful "
                         "detections; use an earlier checkpoint or retrain")
