"""Import torchvision Mask R-CNN weights (`maskrcnn_resnet50_fpn`, v1 and v2) as a model directory.

torchvision tensors are NCHW and its boxes (x1, y1, x2, y2); ours are NHWC and (y1, x1, y2, x2).
The mapping, parameter by parameter:

- convolution kernels (O, I, kh, kw) -> (kh, kw, I, O); the transposed convolution of the mask
  head (I, O, kh, kw) -> (kh, kw, O, I) (Keras `Conv2DTranspose` layout; no spatial flip, both
  frameworks define it as the gradient of a correlation); linear weights (O, I) -> (I, O);
- the first fully connected layer of the box head reads a flattened C x 7 x 7 map in
  channel-major order in torch and (7, 7, C) in ours: its input rows are permuted;
- box-regression outputs come in groups of four (dx, dy, dw, dh): each group is re-ordered to
  (dy, dx, dh, dw) (RPN: one group per anchor; box predictor: one per class, the background's
  group dropped); the mask predictor's background channel is dropped;
- BatchNorm: our layers use epsilon 1e-5. torchvision's `FrozenBatchNorm2d` layers have no
  `num_batches_tracked` buffer and run with eps 0 in the published COCO weights
  (`overwrite_eps(model, 0.0)`); their variance is folded so that `var' + 1e-5 == var + eps`
  holds exactly in float32. `nn.BatchNorm2d` layers (v2, or models built with weights=None)
  carry `num_batches_tracked` and use eps 1e-5.

Reading the weights file is `state_dict.py`'s (a `.pth` needs torch, `pip install -e .[parity]`;
a mapping of numpy arrays or an `.npz` file does not). The converted model never needs torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.config import MaskRCNNConfig, get_config
from keras_maskrcnn.convert.state_dict import load_state_dict, normalize_keys

# COCO 2017 category ids and names; torchvision's 91 labels are these ids (0 = background,
# ids without a category are "N/A").
COCO_CATEGORIES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

# Position j of our (dy, dx, dh, dw) delta group reads position XYXY_TO_YXYX[j] of torchvision's
# (dx, dy, dw, dh) group (the same permutation turns (x1, y1, x2, y2) into (y1, x1, y2, x2)).
XYXY_TO_YXYX = (1, 0, 3, 2)
KERAS_BN_EPSILON = 1e-5
TORCH_BN_EPSILON = 1e-5


def coco_class_names() -> tuple[str, ...]:
    """The 91 names of torchvision's COCO labels: "__background__", "person", ..., "N/A" gaps."""
    return ("__background__", *(COCO_CATEGORIES.get(i, "N/A") for i in range(1, 91)))


# --------------------------------------------------------------------------- inspection


def is_v2(state: Mapping[str, np.ndarray]) -> bool:
    """True for `maskrcnn_resnet50_fpn_v2` weights (conv box head), False for v1 (fc6/fc7)."""
    if "roi_heads.box_head.fc6.weight" in state:
        return False
    if "roi_heads.box_head.0.0.weight" in state:
        return True
    raise ValueError(
        "not a torchvision Mask R-CNN state dict: found neither roi_heads.box_head.fc6.weight "
        "(maskrcnn_resnet50_fpn) nor roi_heads.box_head.0.0.weight (maskrcnn_resnet50_fpn_v2)")


def infer_num_classes(state: Mapping[str, np.ndarray]) -> int:
    """Object classes K (torchvision's num_classes minus the background)."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise ValueError(f"state dict has no {key}: not a torchvision Mask R-CNN")
    count = int(state[key].shape[0])
    mask_key = "roi_heads.mask_predictor.mask_fcn_logits.weight"
    if mask_key not in state:
        raise ValueError(f"state dict has no {mask_key}: a Faster R-CNN? Mask R-CNN is needed")
    if int(state[mask_key].shape[0]) != count:
        raise ValueError(f"box predictor has {count} classes, mask predictor "
                         f"{state[mask_key].shape[0]}")
    return count - 1


def torchvision_config(
    num_classes: int = 90,
    min_size: int = 800,
    max_size: int = 1333,
    v2: bool = False,
    image_size: tuple[int, int] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> MaskRCNNConfig:
    """The `torchvision_r50_fpn(_v2)` preset for K = `num_classes` object classes.

    `image_size` (the canvas) defaults to a square of max_size rounded up to a multiple of 32.
    Class names default to COCO's 91 labels when K = 90, else "class_k".
    """
    if image_size is None:
        side = int(math.ceil(max_size / 32) * 32)
        image_size = (side, side)
    if class_names is None:
        class_names = coco_class_names() if num_classes == 90 else (
            "__background__", *(f"class_{k}" for k in range(1, num_classes + 1)))
    preset = "torchvision_r50_fpn_v2" if v2 else "torchvision_r50_fpn"
    return get_config(preset, num_classes=num_classes, class_names=tuple(class_names),
                      min_size=int(min_size), max_size=int(max_size),
                      train_min_sizes=(int(min_size),), image_size=tuple(image_size))


# --------------------------------------------------------------------------- array mappings


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d weight (O, I, kh, kw) -> Keras Conv2D kernel (kh, kw, I, O)."""
    _check_ndim(weight, 4, "conv weight (O, I, kh, kw)")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def conv_transpose_kernel(weight: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight (I, O, kh, kw) -> Conv2DTranspose kernel (kh, kw, O, I)."""
    _check_ndim(weight, 4, "transposed-conv weight (I, O, kh, kw)")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight (O, I) -> Keras Dense kernel (I, O)."""
    _check_ndim(weight, 2, "linear weight (O, I)")
    return np.ascontiguousarray(weight.T)


def chw_flatten_to_hwc(weight: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Linear weight (O, C*H*W) reading a channel-major flatten -> Dense kernel (H*W*C, O)
    reading an NHWC flatten."""
    _check_ndim(weight, 2, "linear weight (O, C*H*W)")
    out_dim, in_dim = weight.shape
    if in_dim != channels * height * width:
        raise ValueError(f"linear weight has {in_dim} inputs, expected C*H*W = "
                         f"{channels}*{height}*{width}")
    kernel = weight.reshape(out_dim, channels, height, width).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(kernel.reshape(height * width * channels, out_dim))


def delta_rows(num_groups: int, skip_groups: int = 0) -> np.ndarray:
    """Indices of torchvision output rows (groups of (dx, dy, dw, dh)) in our (dy, dx, dh, dw)
    order, leaving out the first `skip_groups` groups (the background class).

    Returns `[4 * (num_groups - skip_groups)]` int64.
    """
    groups = np.arange(skip_groups, num_groups)[:, None] * 4
    return (groups + np.asarray(XYXY_TO_YXYX)[None, :]).reshape(-1)


def fold_bn_variance(variance: np.ndarray, eps: float,
                     target_eps: float = KERAS_BN_EPSILON) -> np.ndarray:
    """A float32 variance v' with fl32(v' + target_eps) == fl32(variance + eps) elementwise
    (exactly where float32 allows, else the nearest), so that a BatchNorm with `target_eps`
    divides by the same sqrt as one with `eps`."""
    variance = np.asarray(variance, np.float32)
    f32_eps, f32_target = np.float32(eps), np.float32(target_eps)
    goal = variance + f32_eps
    if f32_eps == f32_target:
        return variance.copy()
    value = (goal - f32_target).astype(np.float32)
    for _ in range(8):
        total = value + f32_target
        up, down = total < goal, total > goal
        if not (up.any() or down.any()):
            break
        value = np.where(up, np.nextafter(value, np.float32(np.inf)), value)
        value = np.where(down, np.nextafter(value, np.float32(-np.inf)), value)
    return value.astype(np.float32)


def _check_ndim(array: np.ndarray, ndim: int, what: str) -> None:
    if np.ndim(array) != ndim:
        raise ValueError(f"expected a {what}, got shape {np.shape(array)}")


# --------------------------------------------------------------------------- weight assignment


class _StateReader:
    """Pops torch parameters by name, remembering which ones were used."""

    def __init__(self, state: Mapping[str, np.ndarray], frozen_bn_eps: float):
        self.state = dict(state)
        self.used: set[str] = set()
        self.frozen_bn_eps = float(frozen_bn_eps)

    def get(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ValueError(f"torchvision state dict has no {key!r} (needed by the model)")
        self.used.add(key)
        return np.asarray(self.state[key], np.float32)

    def has(self, key: str) -> bool:
        return key in self.state

    def conv(self, prefix: str, bias: bool = True) -> list[np.ndarray]:
        weights = [conv_kernel(self.get(f"{prefix}.weight"))]
        return weights + [self.get(f"{prefix}.bias")] if bias else weights

    def bn(self, prefix: str) -> list[np.ndarray]:
        """[gamma, beta, moving_mean, moving_variance] with the variance folded to eps 1e-5."""
        tracked = f"{prefix}.num_batches_tracked"
        eps = TORCH_BN_EPSILON if tracked in self.state else self.frozen_bn_eps
        if tracked in self.state:
            self.used.add(tracked)
        variance = fold_bn_variance(self.get(f"{prefix}.running_var"), eps)
        return [self.get(f"{prefix}.weight"), self.get(f"{prefix}.bias"),
                self.get(f"{prefix}.running_mean"), variance]

    def unused(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used)


_BACKBONE_NAME = re.compile(r"^res(\d)_(\d+)_(conv|norm)(\d)$")
_BACKBONE_DOWNSAMPLE = re.compile(r"^res(\d)_(\d+)_downsample_(conv|norm)$")


def _backbone_prefix(layer_name: str) -> tuple[str, str] | None:
    """(torch module path, "conv" | "norm") of one of our backbone layers, None for others."""
    if layer_name in ("stem_conv1", "stem_norm1"):
        kind = layer_name[5:9]
        return ("backbone.body.conv1" if kind == "conv" else "backbone.body.bn1"), kind
    match = _BACKBONE_NAME.match(layer_name)
    if match:
        level, block, kind, index = match.groups()
        module = "conv" if kind == "conv" else "bn"
        return f"backbone.body.layer{int(level) - 1}.{block}.{module}{index}", kind
    match = _BACKBONE_DOWNSAMPLE.match(layer_name)
    if match:
        level, block, kind = match.groups()
        index = 0 if kind == "conv" else 1
        return f"backbone.body.layer{int(level) - 1}.{block}.downsample.{index}", kind
    return None


def _layer_assignments(model, reader: _StateReader) -> list[tuple[Any, list[np.ndarray], str]]:
    """(Keras layer, weights in its order, torch prefix) for every layer with weights."""
    c = model.config
    out: list[tuple[Any, list[np.ndarray], str]] = []
    for layer in model.backbone.body.layers:
        found = _backbone_prefix(layer.name)
        if found is None:
            if layer.weights:
                raise ValueError(f"backbone layer {layer.name!r} has no torchvision counterpart")
            continue
        prefix, kind = found
        out.append((layer, reader.conv(prefix, bias=False) if kind == "conv" else reader.bn(prefix),
                    prefix))
    out.extend(_fpn_assignments(model, reader, c.fpn_norm == "bn"))
    out.extend(_rpn_assignments(model, reader))
    out.extend(_box_head_assignments(model, reader))
    out.extend(_mask_head_assignments(model, reader))
    return out


def _fpn_assignments(model, reader: _StateReader, norm: bool):
    out = []
    for level in range(2, 6):
        for ours, theirs in (("fpn_lateral", "inner_blocks"), ("fpn_output", "layer_blocks")):
            prefix = f"backbone.fpn.{theirs}.{level - 2}"
            out.append((model.backbone.fpn.get_layer(f"{ours}{level}"),
                        reader.conv(f"{prefix}.0", bias=not norm), prefix))
            if norm:
                out.append((model.backbone.fpn.get_layer(f"{ours}{level}_norm"), reader.bn(f"{prefix}.1"),
                            prefix))
    return out


def _rpn_assignments(model, reader: _StateReader):
    head = model.rpn.head
    out = [(conv, reader.conv(f"rpn.head.conv.{i}.0"), f"rpn.head.conv.{i}")
           for i, conv in enumerate(head.convs)]
    out.append((head.objectness, reader.conv("rpn.head.cls_logits"), "rpn.head.cls_logits"))
    num_anchors = head.num_anchors
    rows = delta_rows(num_anchors)
    weight = reader.get("rpn.head.bbox_pred.weight")[rows]
    bias = reader.get("rpn.head.bbox_pred.bias")[rows]
    out.append((head.deltas, [conv_kernel(weight), bias], "rpn.head.bbox_pred"))
    return out


def _box_head_assignments(model, reader: _StateReader):
    head = model.roi_heads.box_head
    c = model.config
    size, channels = c.box_pool_size, c.fpn_channels
    norm = head.norm == "bn"
    out = []
    # v2: FastRCNNConvFCHead = convs (+BN) + Flatten + Linear; v1: TwoMLPHead fc6, fc7.
    for i, conv in enumerate(head.convs):
        prefix = f"roi_heads.box_head.{i}"
        out.append((conv, reader.conv(f"{prefix}.0", bias=not norm), prefix))
        if norm:
            out.append((head.norms[i], reader.bn(f"{prefix}.1"), prefix))
    if head.convs:
        channels = head.conv_dim
        first = len(head.convs) + 1  # index of the first Linear after Flatten
        fc_keys = [f"roi_heads.box_head.{first + 2 * j}" for j in range(len(head.fcs))]
    else:
        fc_keys = ["roi_heads.box_head.fc6", "roi_heads.box_head.fc7"][:len(head.fcs)]
    for j, (layer, prefix) in enumerate(zip(head.fcs, fc_keys, strict=True)):
        weight = reader.get(f"{prefix}.weight")
        if j == 0:
            kernel = chw_flatten_to_hwc(weight, channels, size, size)
        else:
            kernel = dense_kernel(weight)
        out.append((layer, [kernel, reader.get(f"{prefix}.bias")], prefix))
    cls = "roi_heads.box_predictor.cls_score"
    out.append((head.class_logits, [dense_kernel(reader.get(f"{cls}.weight")),
                                    reader.get(f"{cls}.bias")], cls))
    box = "roi_heads.box_predictor.bbox_pred"
    rows = delta_rows(head.num_classes + 1, skip_groups=1)
    out.append((head.box_deltas, [dense_kernel(reader.get(f"{box}.weight")[rows]),
                                  reader.get(f"{box}.bias")[rows]], box))
    return out


def _mask_head_assignments(model, reader: _StateReader):
    head = model.roi_heads.mask_head
    norm = head.norm == "bn"
    out = []
    for i, conv in enumerate(head.convs):
        prefix = f"roi_heads.mask_head.{i}"
        out.append((conv, reader.conv(f"{prefix}.0", bias=not norm), prefix))
        if norm:
            out.append((head.norms[i], reader.bn(f"{prefix}.1"), prefix))
    up = "roi_heads.mask_predictor.conv5_mask"
    out.append((head.upsample, [conv_transpose_kernel(reader.get(f"{up}.weight")),
                                reader.get(f"{up}.bias")], up))
    logits = "roi_heads.mask_predictor.mask_fcn_logits"
    out.append((head.predictor, [conv_kernel(reader.get(f"{logits}.weight")[1:]),
                                 reader.get(f"{logits}.bias")[1:]], logits))
    return out


def load_torchvision_weights(model, state_dict: Mapping[str, Any],
                             frozen_bn_eps: float = 0.0) -> None:
    """Copies a torchvision Mask R-CNN state dict into a `MaskRCNN` built from
    `torchvision_config` (v1 or v2 as the weights).

    Every model weight must be assigned and every torchvision parameter used (ValueError
    otherwise, naming them). `frozen_bn_eps` is the eps of torchvision's FrozenBatchNorm2d
    layers: 0.0 for the published COCO weights and models fine-tuned from them, 1e-5 for models
    trained from ImageNet backbone weights; `nn.BatchNorm2d` layers always use 1e-5.
    """
    state = normalize_keys(state_dict)
    reader = _StateReader(state, frozen_bn_eps)
    assigned: set[int] = set()
    for layer, weights, prefix in _layer_assignments(model, reader):
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ValueError(f"{prefix} -> layer {layer.name!r}: shapes {got} do not match the "
                             f"model's {expected} (wrong num_classes or architecture?)")
        layer.set_weights(weights)
        assigned.update(id(w) for w in layer.weights)
    missing = [w.path for w in model.inference_graph().weights if id(w) not in assigned]
    if missing:
        raise ValueError(f"model weights without a torchvision counterpart: {missing[:10]}")
    unused = [k for k in reader.unused() if not k.endswith("num_batches_tracked")]
    if unused:
        raise ValueError(f"torchvision parameters not used by the model: {unused[:10]}")


def convert_torchvision(
    state_dict_or_path: Mapping[str, Any] | str | Path,
    output_dir: str | Path,
    min_size: int = 800,
    max_size: int = 1333,
    v2: bool | None = None,
    frozen_bn_eps: float = 0.0,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Converts torchvision `maskrcnn_resnet50_fpn` (v2: `_v2`) weights to a model directory.

    Args:
        state_dict_or_path: a state dict (tensors or numpy arrays) or a `.pth` / `.npz` path
            (see `load_state_dict`).
        output_dir: the model directory to write (`config.json` + `model.weights.h5`).
        min_size, max_size: the resize rule of torchvision's transform (800 / 1333).
        v2: None detects the architecture from the state dict.
        frozen_bn_eps: eps of torchvision's FrozenBatchNorm2d layers (see
            `load_torchvision_weights`).
        image_size: the canvas (H, W); default a square of max_size rounded up to 32.

    Returns:
        The model directory. The number of classes comes from the box predictor; the class
        names are COCO's 91 labels for 91 torchvision classes, else "class_k".
    """
    state = load_state_dict(state_dict_or_path)
    detected = is_v2(state)
    if v2 is not None and bool(v2) != detected:
        kind = "maskrcnn_resnet50_fpn_v2" if detected else "maskrcnn_resnet50_fpn"
        raise ValueError(f"v2={v2} but the state dict is a {kind}")
    config = torchvision_config(infer_num_classes(state), min_size, max_size, detected,
                                image_size=image_size)
    from keras_maskrcnn.saving import save_model_dir

    model = build_model(config)
    load_torchvision_weights(model, state, frozen_bn_eps=frozen_bn_eps)
    return save_model_dir(model, output_dir)
