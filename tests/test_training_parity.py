"""Training parity with torchvision 0.29: one training step of the `torchvision_r50_fpn` preset
against `maskrcnn_resnet50_fpn` in train mode, on the same weights, images and ground truth.

torchvision runs in a subprocess (torch and TensorFlow cannot share a process here: see
tests/test_torchvision_parity.py): this file run as a script (`python
tests/test_training_parity.py INPUTS.npz OUT_DIR`) builds the torchvision model from a fixed
seed in two set-ups, saves its state dict, and runs one training step in float32 and in
float64, saving the five losses, every parameter's gradient and the targets torchvision
trained towards (anchor labels, sampled RoIs and their class / box targets, mask targets from
its own `project_masks_on_boxes`). The tests load the state dict into our model and compare
our `compute_losses`, gradients and `keras_maskrcnn.targets_debug.training_targets`.

Set-ups: "frozen_bn" is torchvision's pretrained-backbone layout (FrozenBatchNorm2d, stem and
layer1 frozen: our `frozen_bn`, `freeze_at=2`); "bn" is what `maskrcnn_resnet50_fpn(weights=None,
weights_backbone=None)` builds (BatchNorm2d on batch statistics, every layer trained: our `bn`,
`freeze_at=0`). Sampling is made deterministic by quotas larger than the candidates (both
samplers then take every anchor and every RoI); the proposal counts are lowered (both sides)
to keep the step fast.

Gradient tolerance: torchvision's own float32 step differs from its float64 step by rounding;
ours must be within `GRAD_FACTOR` times that difference of the float64 gradient (L2 norm over
all parameters; each tensor within twice that of its own error or `TENSOR_SLACK`).

Skipped only when torch/torchvision are not installed and the CI environment variable is not set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SEED = 0
SIDE = 192  # images at the canvas size: no resize, no padding
NUM_CLASSES = 3
MAX_INSTANCES = 4
BIG_QUOTA = 1_000_000  # more than the candidates: every anchor / RoI is sampled
PRE_NMS, POST_NMS = 1000, 300
SETUPS = ("frozen_bn", "bn")
LOSS_RTOL = 1e-4
# Ours vs torchvision's float64 gradients, relative to torchvision's own float32 error (all
# parameters together). "bn": Keras' BatchNormalization (training mode) normalizes as
# x * inv + (beta - mean * inv), torch as (x - mean) * inv * gamma + beta: measured 1.7x (oneDNN)
# to 2.1x (TF_ENABLE_ONEDNN_OPTS=0) here, against 1.2x / 0.5x with frozen BatchNorm.
GRAD_FACTOR = {"frozen_bn": 2.0, "bn": 3.0}
# Each tensor: within 2 x GRAD_FACTOR of its own float32 error (measured up to 5.5x in "bn"),
# or within TENSOR_SLACK relative L2: oneDNN's float32 gradients of the P4 output conv (nearly
# cancelling, 100x smaller than P3's) are 1e-3 off (4e-6 with TF_ENABLE_ONEDNN_OPTS=0, as
# torchvision's); a mapping or loss mistake gives O(1).
TENSOR_SLACK = 1e-2
# Instance boxes (y1, x1, y2, x2) per image on a 256 canvas (scaled to SIDE); the masks are
# ellipses and triangles inside them.
INSTANCES = (
    ((1, (30.0, 40.0, 140.0, 120.0), "ellipse"), (3, (100.0, 130.0, 230.0, 250.0), "triangle"),
     (2, (150.0, 20.0, 200.0, 90.0), "ellipse")),
    ((2, (10.0, 60.0, 250.0, 200.0), "ellipse"), (1, (180.0, 180.0, 256.0, 256.0), "triangle")),
)

HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH and not os.environ.get("CI"),
                                 reason="torch/torchvision missing: pip install -e .[parity]")


# ================================================================== inputs (numpy)


def instance_mask(box, shape: str, side: int = SIDE) -> np.ndarray:
    """A uint8 [side, side] mask filling part of `box` (y1, x1, y2, x2): an ellipse inscribed
    in it or a triangle (top-left, top-right, bottom-centre), tight to the box."""
    y1, x1, y2, x2 = box
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    if shape == "ellipse":
        cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    else:
        t = (yy - y1) / (y2 - y1)
        half = (1 - t) * (x2 - x1) / 2
        inside = (t >= 0) & (t <= 1) & (np.abs(xx - (x1 + x2) / 2) <= half)
    return inside.astype(np.uint8)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight (y1, x1, y2, x2) box of a mask's pixels (pixel r covers [r, r + 1))."""
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float32)


def sample_batch() -> dict[str, np.ndarray]:
    """Two photographs cut to SIDE x SIDE with synthetic instances (padded to MAX_INSTANCES):
    our training batch with canvas masks."""
    import skimage.data

    images = [skimage.data.astronaut()[:SIDE * 2:2, :SIDE * 2:2],
              skimage.data.coffee()[40:40 + SIDE, 100:100 + SIDE]]
    batch = {"images": np.stack(images).astype(np.float32),
             "image_shape": np.full((2, 2), SIDE, np.float32),
             "gt_boxes": np.zeros((2, MAX_INSTANCES, 4), np.float32),
             "gt_classes": np.zeros((2, MAX_INSTANCES), np.int32),
             "gt_masks": np.zeros((2, MAX_INSTANCES, SIDE, SIDE), np.uint8),
             "sample_seed": np.array([[1, 2], [3, 4]], np.int32)}
    for i, instances in enumerate(INSTANCES):
        for g, (label, box, shape) in enumerate(instances):
            mask = instance_mask(np.asarray(box) * SIDE / 256, shape)
            batch["gt_masks"][i, g] = mask
            batch["gt_boxes"][i, g] = mask_box(mask)
            batch["gt_classes"][i, g] = label
    return batch


def mask_ops_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Masks of images smaller than their canvas and RoIs on and past the image edges, for
    `project_masks` against `project_masks_on_boxes`; masks to resize for the nearest rule."""
    data = {}
    sizes = [(37, 45), (50, 23)]
    data["pm_masks"] = np.zeros((2, 3, 64, 64), np.uint8)
    for b, (h, w) in enumerate(sizes):
        data["pm_masks"][b, :, :h, :w] = rng.uniform(size=(3, h, w)) < 0.5
    data["pm_sizes"] = np.array(sizes, np.int32)
    # RoIs inside the images (proposals are clipped to them), sides >= 1.2 pixels (see
    # `project_masks` for sides under one pixel at the bottom / right edge)
    corner = rng.uniform(0, 21, size=(2, 40, 2))
    extent = rng.uniform(1.2, 30, size=(2, 40, 2))
    rois = np.concatenate([corner, corner + extent], -1)
    # the whole image, corners at the bottom-right edge (reads snapped to the last row /
    # column), an RoI under one pixel (its side clamped to 1)
    for b, (h, w) in enumerate(sizes):  # proposals are clipped to the image
        rois[b, :4] = [[0, 0, h, w], [h - 7, w - 5, h, w], [h - 1.5, w - 2, h, w],
                       [20, 20, 20.4, 20.3]]
        rois[b] = np.clip(rois[b], 0, [h, w, h, w])
    data["pm_rois"] = rois.astype(np.float32)
    data["pm_matched"] = rng.integers(0, 3, size=(2, 40)).astype(np.int32)
    data["nearest_masks"] = (rng.uniform(size=(2, 31, 47)) < 0.5).astype(np.uint8)
    data["nearest_sizes"] = np.array([[31, 47], [62, 94], [20, 30], [45, 67], [100, 151],
                                      [13, 19], [31, 60]], np.int32)
    return data


# ================================================================== the torch side (subprocess)


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(boxes)[..., [1, 0, 3, 2]])


def _torch_mask_ops(torch, data, out) -> None:
    """torchvision's `project_masks_on_boxes` on the image-sized masks; torch's nearest resize."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    for b, (h, w) in enumerate(data["pm_sizes"]):
        masks = torch.from_numpy(data["pm_masks"][b, :, :h, :w].copy())
        rois = torch.from_numpy(_xyxy(data["pm_rois"][b]))
        matched = torch.from_numpy(data["pm_matched"][b]).long()
        out[f"pm_targets{b}"] = project_masks_on_boxes(masks, rois, matched, 28).numpy()
    masks = torch.from_numpy(data["nearest_masks"])
    for k, (h, w) in enumerate(data["nearest_sizes"]):
        scale = min(h / masks.shape[1], w / masks.shape[2])
        resized = torch.nn.functional.interpolate(
            masks[:, None].float(), size=(int(h), int(w)))[:, 0].byte()
        out[f"nearest{k}"] = resized.numpy()
        del scale


def _randomize(torch, model, images, generator) -> None:
    """Random BN affine and biases, He-initialized RPN conv, BN statistics calibrated on the
    images (so that FrozenBN layers made from them keep activations in range)."""
    nn = torch.nn
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.reset_running_stats()
                module.momentum = None
            elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and \
                    module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=generator)
        for module in model.rpn.head.conv.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu",
                                        generator=generator)
        model.backbone.train()
        model.backbone(images)
        model.backbone.eval()


def _spread_heads(torch, model, images) -> None:
    """Scales the RPN and box predictors so that scores separate (no near-ties in top-k)."""
    rpn = model.rpn
    with torch.no_grad():
        features = list(model.backbone(images).values())
        objectness, deltas = rpn.head(features)
        for layer, outputs, target in ((rpn.head.cls_logits, objectness, 2.0),
                                       (rpn.head.bbox_pred, deltas, 0.2)):
            flat = torch.cat([o.reshape(-1) for o in outputs])
            layer.weight.mul_(target / flat.std())
            layer.bias.mul_(target / flat.std())


def _freeze(torch, model) -> None:
    """torchvision's pretrained-backbone layout: FrozenBatchNorm2d (eps 1e-5) holding the
    calibrated statistics, stem and layer1 frozen (`trainable_backbone_layers=3`)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = model.backbone.body
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(parent, name, frozen)
    for name, parameter in body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            parameter.requires_grad_(False)


def _capture_targets(model, store: dict) -> None:
    """Records the anchor labels and the sampled RoIs with their targets of the next step."""
    rpn, heads = model.rpn, model.roi_heads
    assign, select = rpn.assign_targets_to_anchors, heads.select_training_samples

    def assign_hook(anchors, targets):
        labels, matched = assign(anchors, targets)
        store["anchor_labels"] = [t.detach().clone() for t in labels]
        store["anchor_matched"] = [t.detach().clone() for t in matched]
        store["anchors"] = [a.detach().clone() for a in anchors]
        return labels, matched

    def select_hook(proposals, targets):
        result = select(proposals, targets)
        store["rois"], store["matched"], store["labels"], store["box_targets"] = (
            [t.detach().clone() for t in part] for part in result)
        return result

    rpn.assign_targets_to_anchors = assign_hook
    heads.select_training_samples = select_hook


def _train_step(torch, model, data, dtype) -> dict[str, np.ndarray]:
    """One torchvision training step (no optimizer): losses, gradients, targets."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    model = model.to(dtype).train()
    images, targets = [], []
    for i in range(len(data["images"])):
        images.append(torch.from_numpy(data["images"][i].transpose(2, 0, 1).copy()).to(dtype)
                      / 255.0)
        count = int((data["gt_classes"][i] > 0).sum())
        targets.append({
            "boxes": torch.from_numpy(_xyxy(data["gt_boxes"][i, :count])).to(dtype),
            "labels": torch.from_numpy(data["gt_classes"][i, :count]).long(),
            "masks": torch.from_numpy(data["gt_masks"][i, :count].copy())})
    store: dict = {}
    _capture_targets(model, store)
    model.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    out = {k: v.detach().double().numpy() for k, v in losses.items()}  # "loss_..."
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            out[f"grad:{name}"] = parameter.grad.double().numpy()
    for i in range(len(images)):
        out[f"anchor_labels{i}"] = store["anchor_labels"][i].numpy()
        positive = store["labels"][i] > 0
        out[f"rois{i}"] = _xyxy(store["rois"][i].double().numpy())
        out[f"roi_labels{i}"] = store["labels"][i].numpy()
        out[f"roi_box_targets{i}"] = store["box_targets"][i].double().numpy()[:, [1, 0, 3, 2]]
        masks = project_masks_on_boxes(targets[i]["masks"], store["rois"][i][positive],
                                       store["matched"][i][positive], 28)
        out[f"mask_targets{i}"] = masks.double().numpy()
        out[f"mask_rois{i}"] = _xyxy(store["rois"][i][positive].double().numpy())
    return out


def _build_torch_model(torch, setup: str, data):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(SEED)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=SIDE,
        max_size=SIDE, rpn_pre_nms_top_n_train=PRE_NMS, rpn_post_nms_top_n_train=POST_NMS,
        rpn_batch_size_per_image=BIG_QUOTA, box_batch_size_per_image=BIG_QUOTA)
    images = torch.from_numpy(data["images"].transpose(0, 3, 1, 2).copy()) / 255.0
    images = (images - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / \
        torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    _randomize(torch, model, images, torch.Generator().manual_seed(SEED + 1))
    if setup == "frozen_bn":
        _freeze(torch, model)
    _spread_heads(torch, model, images)
    return model


def _gradient_reference(f32: dict, f64: dict, setup: str) -> dict[str, np.ndarray]:
    """The float64 gradients (stored as float32: their rounding, ~6e-8, is far below the
    float32-vs-float64 differences compared) and the norm of torchvision's own float32 error
    per parameter, ||g32 - g64||."""
    out = {}
    for key, g64 in f64.items():
        if key.startswith("grad:"):
            out[f"{setup}/{key}"] = g64.astype(np.float32)
            out[f"{setup}/floor:{key[5:]}"] = np.float64(np.linalg.norm(f32[key] - g64))
    return out


def torch_reference_main(inputs_path: str, out_dir: str) -> None:
    """Entry point of the subprocess: writes OUT_DIR/{state_SETUP.npz, reference.npz}."""
    import copy

    import torch

    data = dict(np.load(inputs_path))
    out: dict[str, np.ndarray] = {}
    _torch_mask_ops(torch, data, out)
    for setup in SETUPS:
        model = _build_torch_model(torch, setup, data)
        np.savez(Path(out_dir) / f"state_{setup}.npz",
                 **{k: v.detach().float().numpy() for k, v in model.state_dict().items()})
        f32 = _train_step(torch, copy.deepcopy(model), data, torch.float32)
        f64 = _train_step(torch, model, data, torch.float64)
        out.update(_gradient_reference(f32, f64, setup))
        out.update({f"{setup}/f32/{k}": v for k, v in f32.items() if not k.startswith("grad:")})
        out.update({f"{setup}/f64/{k}": v for k, v in f64.items() if k.startswith("loss_")})
    np.savez(Path(out_dir) / "reference.npz", **out)


if __name__ == "__main__":
    torch_reference_main(sys.argv[1], sys.argv[2])
    sys.exit(0)


# ================================================================== our side


def _config(setup: str):
    from keras_maskrcnn.convert.torchvision import torchvision_config

    norm = {"frozen_bn": ("frozen_bn", 2), "bn": ("bn", 0)}[setup]
    return torchvision_config(NUM_CLASSES, SIDE, SIDE, image_size=(SIDE, SIDE)).replace(
        max_instances=MAX_INSTANCES, backbone_norm=norm[0], freeze_at=norm[1],
        rpn_pre_nms_topk_train=PRE_NMS, rpn_post_nms_topk_train=POST_NMS,
        rpn_batch_per_image=BIG_QUOTA, roi_batch_per_image=BIG_QUOTA)


def _run_ours(setup: str, state_path: Path, batch, reference) -> dict:
    """Losses, gradients (ours and torchvision's f32 / f64 mapped onto our variables) and
    training targets of our model loaded with the torchvision state."""
    import tensorflow as tf

    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.convert.torchvision import load_state_dict, load_torchvision_weights
    from keras_maskrcnn.model import LOSS_NAMES
    from keras_maskrcnn.targets_debug import training_targets

    model = build_model(_config(setup))
    state = load_state_dict(state_path)
    load_torchvision_weights(model, state, frozen_bn_eps=1e-5)
    out = {"targets": training_targets(model, batch)}
    feed = {k: tf.constant(v) for k, v in batch.items()}
    with tf.GradientTape() as tape:
        losses = model.compute_losses(feed, training=True)
    variables = model.trainable_variables
    grads = tape.gradient(losses["loss"], variables)
    out["losses"] = {n: float(losses[n]) for n in LOSS_NAMES}
    out["grads"] = [np.asarray(g, np.float64) for g in grads]
    out["names"] = [v.path for v in variables]
    # torchvision's float64 gradients in our layout: the weight mapping is linear (transposes,
    # permutations, dropped background rows), so loading a "state dict" of gradients maps them
    # (running statistics kept: they are not compared). The same for the norms of torchvision's
    # own float32 error: a norm per tensor is unchanged by the mapping but for dropped rows,
    # which carry no gradient.
    stats = ("running_mean", "running_var", "num_batches_tracked")
    mapped = {k: v if k.endswith(stats) else reference.get(f"{setup}/grad:{k}", np.zeros_like(v))
              for k, v in state.items()}
    load_torchvision_weights(model, mapped, frozen_bn_eps=1e-5)
    out["tv_f64"] = [np.asarray(v.numpy(), np.float64) for v in variables]
    norms = {k: v if k.endswith(stats) else
             np.full_like(v, reference.get(f"{setup}/floor:{k}", 0.0)) for k, v in state.items()}
    load_torchvision_weights(model, norms, frozen_bn_eps=1e-5)
    out["floor"] = [float(np.asarray(v.numpy()).flat[0]) for v in variables]
    return out


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """{setup: (torchvision's reference, ours)} plus the mask-op references under "ops"."""
    if not HAVE_TORCH:
        pytest.fail("CI is set but torch/torchvision are missing: pip install -e .[parity]")
    directory = tmp_path_factory.mktemp("training_parity")
    batch = sample_batch()
    data = {**batch, **mask_ops_inputs(np.random.default_rng(SEED))}
    np.savez(directory / "inputs.npz", **data)
    process = subprocess.Popen(
        [sys.executable, __file__, str(directory / "inputs.npz"), str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"torchvision reference failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
    reference = dict(np.load(directory / "reference.npz"))
    result = {"ops": (reference, data)}
    for setup in SETUPS:
        result[setup] = (reference, _run_ours(setup, directory / f"state_{setup}.npz", batch,
                                              reference))
    shutil.rmtree(directory, ignore_errors=True)
    return result


@pytest.fixture(scope="module", params=SETUPS)
def setup_result(parity, request):
    reference, ours = parity[request.param]
    return request.param, reference, ours


TV_LOSS_NAMES = {"rpn_objectness_loss": "objectness", "rpn_box_loss": "rpn_box_reg",
                 "class_loss": "classifier", "box_loss": "box_reg", "mask_loss": "mask"}


# ================================================================== tests


@needs_torch
def test_losses_match_torchvision(setup_result):
    setup, reference, ours = setup_result
    for name, tv_name in TV_LOSS_NAMES.items():
        theirs = float(reference[f"{setup}/f32/loss_{tv_name}"])
        theirs64 = float(reference[f"{setup}/f64/loss_{tv_name}"])
        rel = abs(ours["losses"][name] - theirs64) / abs(theirs64)
        rel32 = abs(theirs - theirs64) / abs(theirs64)
        print(f"{setup} {name}: ours {ours['losses'][name]:.7g}, torchvision f32 {theirs:.7g}, "
              f"f64 {theirs64:.7g}; rel. diff ours {rel:.2g}, torchvision f32 {rel32:.2g}")
        assert rel <= LOSS_RTOL, name


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@needs_torch
def test_gradients_match_torchvision(setup_result):
    setup, _, ours = setup_result
    ratios, worst = [], (0.0, "")
    for name, g, g64, floor in zip(ours["names"], ours["grads"], ours["tv_f64"], ours["floor"],
                                   strict=True):
        norm = np.linalg.norm(g64)
        assert norm > 0, f"{name}: torchvision has no gradient here"
        mine = np.linalg.norm(g - g64) / norm
        ratios.append(mine / max(floor / norm, 1e-12))
        worst = max(worst, (ratios[-1], f"{name}: ours {mine:.2g} vs torchvision f32 "
                                        f"{floor / norm:.2g}"))
        assert mine <= max(2 * GRAD_FACTOR[setup] * floor / norm, TENSOR_SLACK), worst[1]
    g64 = np.concatenate([g.ravel() for g in ours["tv_f64"]])
    total = np.linalg.norm(np.concatenate([g.ravel() for g in ours["grads"]]) - g64)
    floor = np.sqrt(np.sum(np.square(ours["floor"])))
    print(f"{setup}: {len(ratios)} gradient tensors; relative L2 distance to torchvision f64: "
          f"ours {total / np.linalg.norm(g64):.3g}, torchvision f32 {floor / np.linalg.norm(g64):.3g} "
          f"(ratio {total / floor:.2f}); per tensor ratio median {np.median(ratios):.2f}, max "
          f"{worst[0]:.2f} ({worst[1]})")
    assert total <= GRAD_FACTOR[setup] * floor


def _match_rows(theirs: np.ndarray, mine: np.ndarray, tol: float) -> np.ndarray:
    """For each row of `theirs` [n, 4] the index of the row of `mine` within `tol` (max abs)."""
    distance = np.abs(theirs[:, None, :] - mine[None, :, :]).max(axis=2)
    index = distance.argmin(axis=1)
    assert np.all(distance[np.arange(len(theirs)), index] < tol), "unmatched RoIs"
    return index


@needs_torch
def test_training_targets_match_torchvision(setup_result):
    setup, reference, ours = setup_result
    t = ours["targets"]
    for i in range(2):
        prefix = f"{setup}/f32/"
        np.testing.assert_array_equal(t["anchor_labels"][i],
                                      reference[f"{prefix}anchor_labels{i}"].astype(np.int32))
        valid = t["weights"][i] > 0
        rois, labels = t["rois"][i][valid], t["class_targets"][i][valid]
        theirs = reference[f"{prefix}rois{i}"]
        assert len(rois) == len(theirs)
        index = _match_rows(theirs, rois, 1e-2)
        assert len(set(index)) == len(index)
        np.testing.assert_array_equal(labels[index], reference[f"{prefix}roi_labels{i}"])
        positive = reference[f"{prefix}roi_labels{i}"] > 0
        np.testing.assert_allclose(t["box_targets"][i][valid][index][positive],
                                   reference[f"{prefix}roi_box_targets{i}"][positive],
                                   atol=2e-3)
        fg = t["mask_weights"][i] > 0
        index = _match_rows(reference[f"{prefix}mask_rois{i}"], t["mask_rois"][i][fg], 1e-2)
        diff = np.abs(t["mask_targets"][i][fg][index] - reference[f"{prefix}mask_targets{i}"])
        print(f"{setup} image {i}: {len(theirs)} RoIs ({positive.sum()} foreground), mask "
              f"targets max |diff| {diff.max():.2g}")
        # The RoIs differ by float32 rounding, up to 4e-3 px (torchvision f32 vs f64: 2e-3),
        # which moves targets by up to ~1e-3; `project_masks` alone agrees to 1e-6 below.
        assert diff.max() < 5e-3


@needs_torch
def test_project_masks_matches_project_masks_on_boxes(parity):
    import tensorflow as tf

    from keras_maskrcnn.ops.masks import project_masks

    reference, data = parity["ops"]
    ours = project_masks(tf.constant(data["pm_masks"]), tf.constant(data["pm_rois"]),
                         tf.constant(data["pm_matched"]), 28,
                         image_shape=tf.constant(data["pm_sizes"], tf.float32)).numpy()
    for b in range(2):
        np.testing.assert_allclose(ours[b], reference[f"pm_targets{b}"], atol=1e-6)


@needs_torch
def test_nearest_mask_resize_matches_torch(parity):
    from keras_maskrcnn.ops.masks import resize_masks_nearest

    reference, data = parity["ops"]
    for k, size in enumerate(data["nearest_sizes"]):
        ours = resize_masks_nearest(data["nearest_masks"], size).numpy()
        np.testing.assert_array_equal(ours, reference[f"nearest{k}"], err_msg=str(size))
