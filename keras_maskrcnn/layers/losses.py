"""Loss layers: the five Mask R-CNN losses as scalars, each named for the progress bar.

Normalizations follow Detectron2: RPN losses are sums over sampled anchors divided by
`batch_per_image * B` (or, with `normalizer="sampled"`, by the number of anchors sampled in the
batch: torchvision's mean over sampled anchors); the box loss is a sum over foreground RoIs
divided by the number of sampled RoIs; classification is the mean over sampled RoIs; the mask
loss is the mean per-pixel binary cross-entropy over foreground RoIs, on the ground-truth class
channel only.

Runs on every Keras backend (`keras.ops`). The binary cross-entropy is written with the same
operations as `tf.nn.sigmoid_cross_entropy_with_logits` (identical numbers on TensorFlow); the
softmax cross-entropy uses TensorFlow's fused kernel on TensorFlow and its definition (log-sum-exp
minus the target logit) elsewhere.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_maskrcnn import backend


def smooth_l1(x, beta: float):
    """Element-wise smooth L1: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta (L1 at beta 0)."""
    absx = ops.abs(x)
    if beta <= 0.0:
        return absx
    return ops.where(absx < beta, 0.5 * ops.square(x) / beta, absx - 0.5 * beta)


def sigmoid_cross_entropy(labels, logits):
    """Element-wise binary cross-entropy of `logits` against `labels` in [0, 1]:
    max(x, 0) - x z + log(1 + exp(-|x|)), in the operations (and order) of
    `tf.nn.sigmoid_cross_entropy_with_logits`, so TensorFlow's numbers are unchanged."""
    logits = ops.convert_to_tensor(logits)
    labels = ops.convert_to_tensor(labels, logits.dtype)
    zeros = ops.zeros_like(logits)
    cond = logits >= zeros
    relu_logits = ops.where(cond, logits, zeros)
    neg_abs_logits = ops.where(cond, -logits, logits)
    return ops.add(relu_logits - logits * labels, ops.log1p(ops.exp(neg_abs_logits)))


def sparse_softmax_cross_entropy(labels, logits):
    """`-log softmax(logits)[label]` per row: `labels [...]` int, `logits [..., C]` -> `[...]`.

    TensorFlow: the fused `tf.nn.sparse_softmax_cross_entropy_with_logits` kernel (today's
    numbers); other backends: `logsumexp(l - max l) - (l[label] - max l)`, the same value up to
    float rounding (tested equal to 1e-6 on TensorFlow).
    """
    if backend.is_tensorflow():
        tf = backend.tensorflow()
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return sparse_softmax_cross_entropy_portable(labels, logits)


def sparse_softmax_cross_entropy_portable(labels, logits):
    """The `keras.ops` form of `sparse_softmax_cross_entropy` (every backend)."""
    logits = ops.convert_to_tensor(logits)
    shifted = logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    log_sum = ops.log(ops.sum(ops.exp(shifted), axis=-1))
    index = ops.expand_dims(ops.cast(labels, "int32"), -1)
    return log_sum - ops.take_along_axis(shifted, index, axis=-1)[..., 0]


def _pick(values, index, axis: int):
    """values[..., index[...], ...] along `axis` (index has the leading dims of `values`)."""
    index = ops.cast(index, "int32")
    for _ in range(len(values.shape) - axis):
        index = ops.expand_dims(index, -1)
    return ops.squeeze(ops.take_along_axis(values, index, axis=axis), axis)


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class RPNLoss(layers.Layer):
    """Call: `logits [B, N]`, `deltas [B, N, 4]`, `labels [B, N]` (1/0/-1), `box_targets [B, N, 4]`
    -> `(objectness_loss, box_loss)` float32 scalars: sums over the sampled anchors (labels
    >= 0; box loss over positives) divided by `batch_per_image * B` (`normalizer="batch"`) or
    by the number of sampled anchors in the batch, at least 1 (`"sampled"`)."""

    NORMALIZERS = ("batch", "sampled")

    def __init__(self, batch_per_image: int = 256, beta: float = 0.0, normalizer: str = "batch",
                 **kwargs):
        super().__init__(**kwargs)
        if normalizer not in self.NORMALIZERS:
            raise ValueError(f"RPNLoss normalizer must be one of {self.NORMALIZERS}, got "
                             f"{normalizer!r}")
        self.batch_per_image = int(batch_per_image)
        self.beta = float(beta)
        self.normalizer = normalizer

    def call(self, logits, deltas, labels, box_targets):
        logits = ops.cast(logits, "float32")
        deltas = ops.cast(deltas, "float32")
        sampled = ops.cast(labels >= 0, "float32")
        positive = ops.cast(labels == 1, "float32")
        if self.normalizer == "sampled":
            normalizer = ops.maximum(ops.sum(sampled), 1.0)
        else:
            normalizer = ops.cast(self.batch_per_image * backend.static_dim(labels, 0), "float32")
        bce = sigmoid_cross_entropy(positive, logits)
        objectness = ops.sum(bce * sampled) / normalizer
        box = ops.sum(smooth_l1(deltas - box_targets, self.beta) * positive[..., None])
        return objectness, box / normalizer

    def get_config(self):
        return {**super().get_config(), "batch_per_image": self.batch_per_image, "beta": self.beta,
                "normalizer": self.normalizer}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class BoxHeadLoss(layers.Layer):
    """Call: `class_logits [B, S, K + 1]`, `deltas [B, S, K, 4]`, `class_targets [B, S]`,
    `box_targets [B, S, 4]`, `weights [B, S]` -> `(class_loss, box_loss)` float32 scalars."""

    def __init__(self, beta: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)

    def call(self, class_logits, deltas, class_targets, box_targets, weights):
        class_logits = ops.cast(class_logits, "float32")
        deltas = ops.cast(deltas, "float32")
        count = ops.maximum(ops.sum(weights), 1.0)
        ce = sparse_softmax_cross_entropy(class_targets, class_logits)
        class_loss = ops.sum(ce * weights) / count
        foreground = ops.cast(class_targets > 0, "float32") * weights
        class_index = ops.maximum(class_targets - 1, 0)
        picked = _pick(deltas, class_index, axis=2)  # [B, S, 4]
        box = ops.sum(smooth_l1(picked - box_targets, self.beta) * foreground[..., None])
        return class_loss, box / count

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class MaskLoss(layers.Layer):
    """Call: `mask_logits [B, F, P, P, K]`, `mask_classes [B, F]`, `mask_targets [B, F, P, P]`
    (binary, or soft in [0, 1] with `mask_target_rule="torchvision"`), `mask_weights [B, F]` ->
    mean binary cross-entropy on the ground-truth class channel."""

    def call(self, mask_logits, mask_classes, mask_targets, mask_weights):
        mask_logits = ops.cast(mask_logits, "float32")
        class_index = ops.maximum(mask_classes - 1, 0)
        picked = _pick(mask_logits, class_index[:, :, None, None], axis=4)  # [B, F, P, P]
        bce = sigmoid_cross_entropy(ops.cast(mask_targets, "float32"), picked)
        per_roi = ops.mean(bce, axis=(2, 3))
        return ops.sum(per_roi * mask_weights) / ops.maximum(ops.sum(mask_weights), 1.0)
