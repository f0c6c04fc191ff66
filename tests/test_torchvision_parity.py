"""Parity with torchvision 0.29: imported `maskrcnn_resnet50_fpn` weights give the same outputs.

torch and TensorFlow cannot share a process here (importing torch after TensorFlow segfaults, and
pytest imports TensorFlow through other test modules first), so torchvision runs in a subprocess:
this file run as a script (`python tests/test_torchvision_parity.py INPUTS.npz OUT_DIR`) builds
torchvision's model from a fixed seed, re-scales its random weights so that the scores separate
(BatchNorm statistics calibrated on the images, prediction layers scaled to a set output spread),
saves the state dict and the outputs of every stage, and the tests compare ours stage by stage:
preprocessed image, FPN features, anchors, RPN head outputs and proposals; box-head outputs and
detections for torchvision's own proposals; mask logits for torchvision's own detections; and
the final detections in original pixels with pasted masks. RoIAlign and NMS are also compared
element-wise on random inputs.

The v1 state dict is saved the way torchvision's published COCO weights are: FrozenBatchNorm2d
with eps 0 in the backbone (a few channels with a variance near 1e-5, so a wrong eps shows),
legacy (torchvision < 0.13) key names, wrapped in a checkpoint dict. maskrcnn_resnet50_fpn_v2
(BatchNorm in the FPN and the heads, two RPN convs, a conv box head) is compared stage by stage.

Tolerances are float32 rounding through ~60 convolution layers: each layer adds relative
errors of ~1e-6 of its accumulations (different summation orders, oneDNN vs Eigen), so
features agree to ~1e-5..1e-4 of their largest value; REL_TOL sits a few times above what was
measured and far below any mapping mistake (a wrong permutation gives errors of order 1).

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
MIN_SIZE, MAX_SIZE = 320, 512
# Fewer proposals and detections than torchvision's defaults (1000 / 100) keep the test fast;
# the defaults are checked against the preset in `test_preset_matches_torchvision_defaults`.
POST_NMS_TEST, DETECTIONS = 300, 15
IMAGE_NAMES = ("astronaut", "chelsea", "coffee", "stereo_motorcycle")
V2_IMAGES = (1,)  # maskrcnn_resnet50_fpn_v2 is compared stage by stage on chelsea
OTHER_BACKENDS = ("jax", "torch")  # the end-to-end comparison runs on these too
RA_CASES = [(aligned, ratio, scale, size) for aligned in (False, True) for ratio in (0, 1, 2)
            for scale, size in ((1.0, (7, 7)), (0.25, (3, 5)))]
NMS_THRESHOLDS = (0.3, 0.5, 0.7)
BOX_MATCH_IOU = 0.99
# Max |ours - torchvision| / max |torchvision| per stage; measured up to 3e-5 (v1) and 1.5e-4
# (v2: BatchNorm after every FPN / head conv) here at 320/512, 1.1e-4 / 2.0e-4 at 800/1333;
# a wrong permutation, transpose or BN eps gives errors above 1e-2 (eps 1e-5 for 0: 0.6).
REL_TOL = 5e-4

HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH and not os.environ.get("CI"),
                                 reason="torch/torchvision missing: pip install -e .[parity]")


# ================================================================== the torch side (subprocess)


def _to_nhwc(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().transpose(0, 2, 3, 1))


def _xyxy_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(boxes, np.float32)[..., [1, 0, 3, 2]])


def _pad_rows(arrays, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacks per-image arrays [n_i, ...] into [B, rows, ...] zeros-padded, with the counts."""
    out = np.zeros((len(arrays), rows, *arrays[0].shape[1:]), arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out, np.array([len(a) for a in arrays], np.int32)


def _torch_ops_reference(torch, tv_ops, data, out) -> None:
    """roi_align forward + gradient for every case, nms and batched_nms."""
    features = torch.from_numpy(data["ra_features"].transpose(0, 3, 1, 2).copy())
    indices = torch.from_numpy(data["ra_indices"]).float()[:, None]
    for k, (aligned, ratio, scale, size) in enumerate(RA_CASES):
        boxes = torch.from_numpy(_xyxy_to_yxyx(data["ra_boxes"] / scale))  # -> (x1, y1, ..)
        rois = torch.cat([indices, boxes], dim=1)
        feats = features.clone().requires_grad_(True)
        pooled = tv_ops.roi_align(feats, rois, size, scale, ratio, aligned)
        upstream = torch.from_numpy(data[f"ra_upstream{k}"].transpose(0, 3, 1, 2).copy())
        (grad,) = torch.autograd.grad((pooled * upstream).sum(), feats)
        out[f"ra_out{k}"] = _to_nhwc(pooled)
        out[f"ra_grad{k}"] = _to_nhwc(grad)
    nms_boxes = torch.from_numpy(_xyxy_to_yxyx(data["nms_boxes"]))
    scores = torch.from_numpy(data["nms_scores"])
    for t in NMS_THRESHOLDS:
        out[f"nms_keep{t}"] = tv_ops.nms(nms_boxes, scores, t).numpy()
    groups = torch.from_numpy(data["nms_groups"]).long()
    out["batched_nms_keep"] = tv_ops.batched_nms(nms_boxes, scores, groups, 0.5).numpy()


def _torch_hyperparameters(torchvision, model, out) -> None:
    """torchvision's defaults, from the builder's signature and from the built model."""
    import inspect

    from torchvision.models.detection import FasterRCNN

    defaults = {k: p.default for k, p in inspect.signature(FasterRCNN.__init__).parameters.items()}
    rpn, rh = model.rpn, model.roi_heads
    values = {
        "min_size": defaults["min_size"], "max_size": defaults["max_size"],
        "rpn_pre_nms_topk_train": defaults["rpn_pre_nms_top_n_train"],
        "rpn_pre_nms_topk_test": defaults["rpn_pre_nms_top_n_test"],
        "rpn_post_nms_topk_train": defaults["rpn_post_nms_top_n_train"],
        "rpn_post_nms_topk_test": defaults["rpn_post_nms_top_n_test"],
        "detections_per_image": defaults["box_detections_per_img"],
        "rpn_nms_threshold": rpn.nms_thresh, "rpn_min_box_size": rpn.min_size,
        "rpn_score_threshold": rpn.score_thresh,
        "rpn_positive_iou": rpn.proposal_matcher.high_threshold,
        "rpn_negative_iou": rpn.proposal_matcher.low_threshold,
        "rpn_batch_per_image": rpn.fg_bg_sampler.batch_size_per_image,
        "rpn_positive_fraction": rpn.fg_bg_sampler.positive_fraction,
        "roi_batch_per_image": rh.fg_bg_sampler.batch_size_per_image,
        "roi_positive_fraction": rh.fg_bg_sampler.positive_fraction,
        "roi_foreground_iou": rh.proposal_matcher.high_threshold,
        "box_coder_weights": rh.box_coder.weights, "rpn_coder_weights": rpn.box_coder.weights,
        "scale_clamp": rh.box_coder.bbox_xform_clip,
        "score_threshold": rh.score_thresh, "nms_threshold": rh.nms_thresh,
        "box_pool_size": rh.box_roi_pool.output_size[0],
        "mask_pool_size": rh.mask_roi_pool.output_size[0],
        "pooler_sampling_ratio": rh.box_roi_pool.sampling_ratio,
        "mask_sampling_ratio": rh.mask_roi_pool.sampling_ratio,
        "canonical_box_size": rh.box_roi_pool.canonical_scale,
        "canonical_level": rh.box_roi_pool.canonical_level,
        "pixel_mean": model.transform.image_mean, "pixel_std": model.transform.image_std,
        "anchor_sizes": [s[0] for s in rpn.anchor_generator.sizes],
        "aspect_ratios": rpn.anchor_generator.aspect_ratios[0],
        "size_divisible": model.transform.size_divisible,
    }
    for key, value in values.items():
        out[f"hp_{key}"] = np.asarray(value, np.float64)


def _randomize(torch, model, images, generator) -> None:
    """Random BN affine + biases; BN statistics of the backbone (and of the FPN in v2)
    calibrated on the half-size images."""
    nn = torch.nn
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
            elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and \
                    module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=generator)
        for module in model.rpn.head.conv.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's std 0.01 gives near-zero logits
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu",
                                        generator=generator)
        small = nn.functional.interpolate(images, scale_factor=0.5, mode="bilinear")
        _calibrate(model.backbone, small)


def _calibrate(module, *inputs) -> None:
    """One forward pass in training mode: BatchNorm layers with momentum None take the batch's
    statistics as their running statistics."""
    module.train()
    module(*inputs)
    module.eval()


def _freeze_batchnorm(torch, body, generator) -> None:
    """Turns the backbone's BatchNorm2d into FrozenBatchNorm2d with eps 0, as torchvision's
    published COCO weights run (`overwrite_eps(model, 0.0)`); a few channels get a variance near
    1e-5 (gamma scaled to keep their output spread) so that a wrong eps would show."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.BatchNorm2d):
                continue
            frozen = FrozenBatchNorm2d(child.num_features, eps=0.0)
            small = torch.rand(child.num_features, generator=generator) < 0.05
            variance = child.running_var.clone()
            target = torch.where(small, torch.full_like(variance, 2e-5), variance)
            frozen.weight.copy_(child.weight * torch.sqrt(target / variance))
            frozen.bias.copy_(child.bias)
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(target)
            setattr(parent, name, frozen)


def _legacy_checkpoint(state: dict) -> dict:
    """The state dict under torchvision < 0.13 names (as its published v1 COCO file), wrapped
    like a torchvision reference-script checkpoint."""
    import re

    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", key)
        key = re.sub(r"^(backbone\.fpn\.(inner|layer)_blocks\.\d+)\.0\.", r"\1.", key)
        match = re.match(r"^roi_heads\.mask_head\.(\d+)\.0\.(.*)$", key)
        if match:
            key = f"roi_heads.mask_head.mask_fcn{int(match.group(1)) + 1}.{match.group(2)}"
        renamed[key] = value
    return {"model": renamed, "epoch": 25}


def _set_spread(torch, layer, outputs, target: float) -> None:
    """Scales a prediction layer so that its outputs have standard deviation `target`."""
    flat = torch.cat([o.reshape(-1) for o in outputs])
    with torch.no_grad():
        factor = target / flat.std()
        layer.weight.mul_(factor)
        layer.bias.mul_(factor)


def _torch_model_reference(torch, torchvision, data, out_dir: Path, out, v2: bool) -> None:
    """v1: the four images, the state saved as a legacy-named .pth checkpoint; v2 (keys
    prefixed "v2_"): the images V2_IMAGES, the state saved as .npz."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    torch.manual_seed(SEED)
    builder = maskrcnn_resnet50_fpn_v2 if v2 else maskrcnn_resnet50_fpn
    model = builder(
        weights=None, weights_backbone=None, num_classes=91, min_size=int(data["min_size"]),
        max_size=int(data["max_size"]), rpn_post_nms_top_n_test=int(data["post_nms"]),
        box_detections_per_img=int(data["detections"])).eval()
    if not v2:
        _torch_hyperparameters(torchvision, model, out)
    indices = V2_IMAGES if v2 else range(int(data["num_images"]))
    originals = [data[f"image{i}"] for i in indices]
    prefix = "v2_" if v2 else ""
    x = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255.0
         for im in originals]
    rpn, rh = model.rpn, model.roi_heads
    captured = {}  # the latest output of each hooked module
    for name, module in (("rpn_head", rpn.head), ("pool", rh.box_roi_pool),
                         ("box", rh.box_predictor), ("mask", rh.mask_predictor)):
        module.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    with torch.no_grad():
        images, _ = model.transform(x)
        sizes = images.image_sizes
        generator = torch.Generator().manual_seed(SEED + 1)
        _randomize(torch, model, images.tensors, generator)
        if not v2:
            _freeze_batchnorm(torch, model.backbone.body, generator)
        features = model.backbone(images.tensors)
        levels = list(features.values())
        objectness, deltas = rpn.head(levels[1:])  # P2 is the costly level: spread of P3-P6
        _set_spread(torch, rpn.head.cls_logits, objectness, 2.0)
        _set_spread(torch, rpn.head.bbox_pred, deltas, 0.2)
        proposals, _ = rpn(images, features)
        objectness, deltas = captured["rpn_head"]
        flat_obj, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        anchors = rpn.anchor_generator(images, levels)[0]
        pooled = rh.box_roi_pool(features, [p[:100] for p in proposals], sizes)
        if v2:
            _calibrate(rh.box_head, pooled)
        class_logits, box_deltas = rh.box_predictor(rh.box_head(pooled))
        _set_spread(torch, rh.box_predictor.cls_score, [class_logits], 2.5)
        _set_spread(torch, rh.box_predictor.bbox_pred, [box_deltas], 0.5)
        pooled = rh.mask_roi_pool(features, [p[:20] for p in proposals], sizes)
        if v2:
            _calibrate(rh.mask_head, pooled)
        mask_logits = rh.mask_predictor(rh.mask_head(pooled))
        _set_spread(torch, rh.mask_predictor.mask_fcn_logits, [mask_logits], 3.0)
        if v2:
            np.savez(out_dir / "v2_state.npz",
                     **{k: v.numpy() for k, v in model.state_dict().items()})
        else:
            torch.save(_legacy_checkpoint(model.state_dict()), out_dir / "state.pth")
        detections, _ = rh(features, proposals, sizes)
        raw = [{k: v.clone() for k, v in d.items()} for d in detections]
        final = model.transform.postprocess(detections, sizes, [im.shape[:2] for im in originals])

    num = len(x)
    tv = {}
    tv["tv_images"] = _to_nhwc(images.tensors)
    tv["tv_image_sizes"] = np.array(sizes, np.int32)
    for k, level in enumerate(levels):
        tv[f"tv_feature{k}"] = _to_nhwc(level)
    tv["tv_rpn_logits"] = flat_obj.reshape(num, -1).numpy()
    tv["tv_rpn_deltas"] = flat_deltas.reshape(num, -1, 4)[..., [1, 0, 3, 2]].numpy()
    tv["tv_anchors"] = _xyxy_to_yxyx(anchors.numpy())
    rows = int(data["post_nms"])
    tv["tv_proposals"], tv["tv_num_proposals"] = _pad_rows(
        [_xyxy_to_yxyx(p.numpy()) for p in proposals], rows)
    splits = [len(p) for p in proposals]
    logits, regression = captured["box"]
    tv["tv_class_logits"], _ = _pad_rows([t.numpy() for t in logits.split(splits)], rows)
    k = logits.shape[1] - 1  # object classes
    ours_order = regression.reshape(-1, k + 1, 4)[:, 1:, [1, 0, 3, 2]]
    tv["tv_box_deltas"], _ = _pad_rows([t.numpy() for t in ours_order.split(splits)], rows)
    tv["tv_box_pooled"] = np.stack([_to_nhwc(t[:16]) for t in captured["pool"].split(splits)])
    dets = int(data["detections"])
    tv["tv_det_boxes"], tv["tv_num_detections"] = _pad_rows(
        [_xyxy_to_yxyx(d["boxes"].numpy()) for d in raw], dets)
    tv["tv_det_scores"], _ = _pad_rows([d["scores"].numpy() for d in raw], dets)
    tv["tv_det_labels"], _ = _pad_rows([d["labels"].numpy().astype(np.int32) for d in raw], dets)
    det_splits = [len(d["boxes"]) for d in raw]
    mask_nhwc = [_to_nhwc(t[:, 1:]) for t in captured["mask"].split(det_splits)]
    tv["tv_mask_logits"], _ = _pad_rows(mask_nhwc, dets)
    for i, result in enumerate(final):
        tv[f"tv_final_boxes{i}"] = _xyxy_to_yxyx(result["boxes"].numpy())
        tv[f"tv_final_scores{i}"] = result["scores"].numpy()
        tv[f"tv_final_labels{i}"] = result["labels"].numpy().astype(np.int32)
        tv[f"tv_final_masks{i}"] = (result["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
    out.update({prefix + key: value for key, value in tv.items()})


def torch_reference_main(inputs_path: str, out_dir: str) -> None:
    """Entry point of the subprocess: reads INPUTS.npz, writes OUT_DIR/{state.pth,reference.npz}."""
    import torch
    import torchvision
    from torchvision import ops as tv_ops

    data = dict(np.load(inputs_path))
    out: dict[str, np.ndarray] = {}
    _torch_ops_reference(torch, tv_ops, data, out)
    _torch_model_reference(torch, torchvision, data, Path(out_dir), out, v2=False)
    _torch_model_reference(torch, torchvision, data, Path(out_dir), out, v2=True)
    np.savez(Path(out_dir) / "reference.npz", **out)


if __name__ == "__main__":
    torch_reference_main(sys.argv[1], sys.argv[2])
    sys.exit(0)


# ================================================================== inputs and fixtures


def sample_images() -> list[np.ndarray]:
    """scikit-image's bundled photographs (no download): astronaut, chelsea, coffee and the
    left view of stereo_motorcycle."""
    import skimage.data

    images = []
    for name in IMAGE_NAMES:
        image = getattr(skimage.data, name)()
        images.append(np.ascontiguousarray(image[0] if isinstance(image, tuple) else image))
    return images


def _ops_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    features = rng.normal(size=(2, 12, 16, 3)).astype(np.float32)
    # (y1, x1, y2, x2), some on and past the border, some tiny.
    # Boxes in feature pixels (divided by the spatial scale of each case).
    boxes = np.array([[0, 0, 12, 16], [2.3, 1.7, 9.6, 13.2], [-3, -2, 5, 4], [6, 10, 15, 22],
                      [10.5, 14.5, 11.0, 15.2], [-6, -6, -1.5, -0.5], [1, 1, 1.4, 30],
                      [4.2, 3.1, 7.9, 9.0]], np.float32)
    data = {"ra_features": features, "ra_boxes": boxes,
            "ra_indices": np.array([0, 1, 0, 1, 0, 1, 1, 0], np.int32)}
    for k, (_, _, _, size) in enumerate(RA_CASES):
        data[f"ra_upstream{k}"] = rng.normal(size=(len(boxes), *size, 3)).astype(np.float32)
    corner = rng.uniform(0, 80, size=(300, 2))
    extent = rng.uniform(4, 40, size=(300, 2))
    data["nms_boxes"] = np.concatenate([corner, corner + extent], 1).astype(np.float32)
    data["nms_scores"] = rng.permutation(300).astype(np.float32) / 300 + 0.001
    data["nms_groups"] = rng.integers(0, 4, size=300).astype(np.int32)
    return data


def _start_reference(directory: Path) -> tuple[subprocess.Popen, dict[str, np.ndarray]]:
    """Writes the inputs and starts the torchvision subprocess (it runs while TF builds)."""
    data = _ops_inputs(np.random.default_rng(SEED))
    images = sample_images()
    data.update({f"image{i}": im for i, im in enumerate(images)})
    data.update(num_images=np.int64(len(images)), min_size=np.int64(MIN_SIZE),
                max_size=np.int64(MAX_SIZE), post_nms=np.int64(POST_NMS_TEST),
                detections=np.int64(DETECTIONS))
    np.savez(directory / "inputs.npz", **data)
    process = subprocess.Popen(
        [sys.executable, __file__, str(directory / "inputs.npz"), str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, data


def _finish_reference(process: subprocess.Popen, data, directory: Path):
    """(v1 reference, v2 reference): torchvision's outputs plus the inputs and the state path."""
    stdout, stderr = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"torchvision reference failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
    out = dict(np.load(directory / "reference.npz"))
    v1 = {**data, **{k: v for k, v in out.items() if not k.startswith("v2_")},
          "state_path": directory / "state.pth", "images": sample_images()}
    v2 = {**data, **{k[3:]: v for k, v in out.items() if k.startswith("v2_")},
          "state_path": directory / "v2_state.npz",
          "images": [sample_images()[i] for i in V2_IMAGES]}
    return v1, v2


def _torchvision_canvas(images) -> tuple[int, int]:
    """torchvision's batch size: the largest resized size rounded up to a multiple of 32."""
    sizes = np.array([_torchvision_resized_shape(*im.shape[:2], MIN_SIZE, MAX_SIZE)
                      for im in images])
    return tuple(int(np.ceil(v / 32) * 32) for v in sizes.max(axis=0))


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """{"v1": (torchvision's outputs, ours), "v2": (...)}: each converted state dict run stage by
    stage (v1 also end to end) on the same inputs as torchvision."""
    if not HAVE_TORCH:
        pytest.fail("CI is set but torch/torchvision are missing: pip install -e .[parity]")
    directory = tmp_path_factory.mktemp("torchvision_parity")
    process, data = _start_reference(directory)
    try:  # build our models while torchvision computes
        images = sample_images()
        model = _build_model(_torchvision_canvas(images), v2=False)
        model_v2 = _build_model(_torchvision_canvas([images[i] for i in V2_IMAGES]), v2=True)
    except BaseException:
        process.kill()
        raise
    reference, reference_v2 = _finish_reference(process, data, directory)
    result = {"v1": (reference, _run_ours(model, reference, end_to_end=True)),
              "v2": (reference_v2, _run_ours(model_v2, reference_v2, end_to_end=False))}
    result["backends"] = _on_other_backends(model, result["v1"][1]["batch"], directory)
    shutil.rmtree(directory, ignore_errors=True)  # ~0.5 GB of state dicts and outputs
    return result


def _on_other_backends(model, batch: dict, directory: Path) -> dict[str, list[dict]]:
    """The converted model's end-to-end detections on JAX and PyTorch (each in its own process,
    TensorFlow blocked), from the model directory TensorFlow saves."""
    from helpers import run_backend_worker

    from keras_maskrcnn.saving import save_model_dir

    save_model_dir(model, directory / "converted")
    np.savez(directory / "batch.npz", **batch)
    found = {}
    for backend in OTHER_BACKENDS:
        out_path = directory / f"{backend}.npz"
        run_backend_worker(backend, "predict", directory / "converted", directory / "batch.npz",
                           out_path)
        out = dict(np.load(out_path))
        found[backend] = [{key: out[f"{key}{i}"] for key in ("boxes", "scores", "labels",
                                                              "masks")}
                          for i in range(len(batch["images"]))]
    return found


@pytest.fixture(scope="module")
def reference(parity):
    return parity["v1"][0]


@pytest.fixture(scope="module", params=["v1", "v2"])
def stage(parity, request):
    """(reference, ours) of maskrcnn_resnet50_fpn (v1) and maskrcnn_resnet50_fpn_v2."""
    return parity[request.param]


def _build_model(canvas, v2: bool):
    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.convert.torchvision import torchvision_config

    config = torchvision_config(90, MIN_SIZE, MAX_SIZE, v2=v2, image_size=canvas).replace(
        rpn_post_nms_topk_test=POST_NMS_TEST, detections_per_image=DETECTIONS)
    return build_model(config)


def _inputs_like_torchvision(images, tv_sizes, config):
    """Our batch from the package pipeline; an image whose resized size differs from
    torchvision's (see `test_resize_rule_matches_torchvision`) is resized to torchvision's size
    with the pipeline's own resize op, so that the model comparison sees the same input."""
    import tensorflow as tf

    from keras_maskrcnn.data.pipeline import make_inference_inputs

    assert (config.min_size, config.max_size) == (MIN_SIZE, MAX_SIZE)
    batch = make_inference_inputs(images, config)
    for i, (image, size) in enumerate(zip(images, tv_sizes, strict=True)):
        if tuple(batch["image_shape"][i].astype(int)) != tuple(size):
            resized = tf.image.resize(tf.cast(image, tf.float32), tuple(int(s) for s in size),
                                      method="bilinear", antialias=False).numpy()
            batch["images"][i] = 0.0
            batch["images"][i, :size[0], :size[1]] = resized
            batch["image_shape"][i] = np.asarray(size, np.float32)
    return batch


def _run_ours(model, reference, end_to_end: bool) -> dict:
    """Loads the converted weights and runs our layers on the inputs of each torchvision stage;
    with `end_to_end` also the inference graph + `inference.postprocess` on the images."""
    import tensorflow as tf

    from keras_maskrcnn.convert.torchvision import load_state_dict, load_torchvision_weights
    from keras_maskrcnn.inference import postprocess, run_model

    config = model.config
    canvas = config.image_size
    assert tuple(reference["tv_images"].shape[1:3]) == tuple(canvas)
    # v1: a legacy-named .pth checkpoint, read by torch in a subprocess; v2: an .npz
    load_torchvision_weights(model, load_state_dict(reference["state_path"]))
    images = reference["images"]
    batch = _inputs_like_torchvision(images, reference["tv_image_sizes"], config)
    out = {"model": model, "batch": batch, "pipeline_shapes": _pipeline_shapes(images)}
    image_shape = tf.constant(batch["image_shape"])
    out["normalized"] = model.normalizer(tf.constant(batch["images"]), image_shape).numpy()
    features = model.backbone(tf.constant(out["normalized"]))
    out["features"] = [f.numpy() for f in features]
    logits, deltas = model.rpn.head(features)
    out["rpn_logits"], out["rpn_deltas"] = logits.numpy(), deltas.numpy()
    anchors = model.rpn.anchor_generator(tf.constant(batch["images"]))
    out["anchors"] = anchors.numpy()
    proposals, num = model.rpn.test_proposals(logits, deltas, anchors, image_shape)
    out["proposals"], out["num_proposals"] = proposals.numpy(), num.numpy()

    tv_props = tf.constant(reference["tv_proposals"])
    pooled = model.roi_heads.box_pooler(features[:4], tv_props)
    out["box_pooled"] = pooled.numpy()[:, :16]
    class_logits, box_deltas = model.roi_heads.box_head(pooled)
    out["class_logits"], out["box_deltas"] = class_logits.numpy(), box_deltas.numpy()
    dets = model.roi_heads.detection_layer(tv_props, tf.constant(reference["tv_num_proposals"]),
                                 class_logits, box_deltas, image_shape)
    out["det_boxes"], out["det_scores"], out["det_classes"], out["num_det"] = (
        t.numpy() for t in dets)
    mask_logits = model.roi_heads.mask_head(model.roi_heads.mask_pooler(features[:4],
                                                    tf.constant(reference["tv_det_boxes"])))
    out["mask_logits"] = mask_logits.numpy()
    if end_to_end:
        outputs = run_model(model, batch)
        out["final"] = [postprocess(outputs, batch, i, config.mask_threshold, config.mask_paste)
                        for i in range(len(images))]
    return out


def _pipeline_shapes(images) -> np.ndarray:
    """Resized (h, w) of each image by the package's resize rule."""
    from keras_maskrcnn.transform import compute_resized_shape

    return np.array([compute_resized_shape(*im.shape[:2], MIN_SIZE, MAX_SIZE) for im in images])


def _valid(array: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenates the first counts[i] rows of array[i]."""
    return np.concatenate([a[:n] for a, n in zip(array, counts, strict=True)])


def _report(name: str, ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs)))
    spread = float(np.max(np.abs(theirs)))
    print(f"{name}: max |diff| {diff:.3g}, max |value| {spread:.3g}")
    return diff, spread


# ================================================================== element-wise ops


@needs_torch
def test_roi_align_matches_torchvision(reference):
    import tensorflow as tf

    from keras_maskrcnn.ops import roi_align

    features = tf.constant(reference["ra_features"])
    for k, (aligned, ratio, scale, size) in enumerate(RA_CASES):
        with tf.GradientTape() as tape:
            tape.watch(features)
            boxes = reference["ra_boxes"] / scale
            pooled = roi_align(features, boxes, reference["ra_indices"], size,
                               spatial_scale=scale, sampling_ratio=ratio, aligned=aligned,
                               implementation="gather")
            loss = tf.reduce_sum(pooled * reference[f"ra_upstream{k}"])
        grad = tape.gradient(loss, features).numpy()
        case = f"aligned={aligned} sampling_ratio={ratio} scale={scale} size={size}"
        np.testing.assert_allclose(pooled.numpy(), reference[f"ra_out{k}"], atol=1e-5,
                                   err_msg=f"forward {case}")
        np.testing.assert_allclose(grad, reference[f"ra_grad{k}"], atol=3e-5,
                                   err_msg=f"gradient {case}")


@needs_torch
def test_nms_matches_torchvision(reference):
    from keras_maskrcnn.ops import grouped_nms_padded, nms_padded

    boxes, scores = reference["nms_boxes"], reference["nms_scores"]
    for t in NMS_THRESHOLDS:
        indices, num = nms_padded(boxes, scores, 300, t)
        np.testing.assert_array_equal(indices.numpy()[:int(num)], reference[f"nms_keep{t}"])
    indices, num = grouped_nms_padded(boxes[None], scores[None], reference["nms_groups"][None],
                                      300, 0.5)
    np.testing.assert_array_equal(indices.numpy()[0, :int(num[0])], reference["batched_nms_keep"])


# ================================================================== the model, stage by stage


@needs_torch
def test_preset_matches_torchvision_defaults(reference):
    from keras_maskrcnn.config import get_config

    c = get_config("torchvision_r50_fpn")
    hp = {k[3:]: reference[k] for k in reference if k.startswith("hp_")}
    for field in ("min_size", "max_size", "rpn_pre_nms_topk_train", "rpn_pre_nms_topk_test",
                  "rpn_post_nms_topk_train", "rpn_post_nms_topk_test", "detections_per_image",
                  "rpn_nms_threshold", "rpn_min_box_size", "rpn_positive_iou",
                  "rpn_negative_iou", "rpn_batch_per_image", "rpn_positive_fraction",
                  "roi_batch_per_image", "roi_positive_fraction", "roi_foreground_iou",
                  "score_threshold", "nms_threshold", "box_pool_size", "mask_pool_size",
                  "pooler_sampling_ratio", "canonical_box_size", "canonical_level",
                  "anchor_sizes", "aspect_ratios"):
        np.testing.assert_allclose(np.asarray(getattr(c, field), np.float64), hp[field],
                                   err_msg=field)
    assert hp["mask_sampling_ratio"] == c.pooler_sampling_ratio
    assert hp["rpn_score_threshold"] == 0.0  # torchvision keeps probabilities >= 0: all boxes
    np.testing.assert_allclose(hp["box_coder_weights"], c.box_coder_weights)  # (10, 10, 5, 5)
    np.testing.assert_allclose(hp["rpn_coder_weights"], 1.0)
    np.testing.assert_allclose(hp["scale_clamp"], np.log(1000.0 / 16), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(c.pixel_mean), hp["pixel_mean"] * 255, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(c.pixel_std), hp["pixel_std"] * 255, rtol=1e-12)
    assert hp["size_divisible"] == 32
    assert c.pooler_aligned is False and c.round_anchors and c.anchor_stride_from_grid
    assert c.mask_paste == "torchvision" and c.min_detection_size == 1e-2


@needs_torch
def test_preprocessed_image(stage):
    reference, ours = stage
    sizes = reference["tv_image_sizes"]
    agree = np.all(ours["pipeline_shapes"] == sizes, axis=1)
    print("pipeline resize agrees with torchvision for", agree.sum(), "of", len(agree), "images")
    diff, _ = _report("preprocessed image", ours["normalized"], reference["tv_images"])
    assert diff < 1e-4  # float32 normalize-then-resize vs resize-then-normalize


@needs_torch
def test_fpn_features(stage):
    reference, ours = stage
    for k in range(5):
        diff, spread = _report(f"P{k + 2}", ours["features"][k], reference[f"tv_feature{k}"])
        assert diff <= REL_TOL * spread


@needs_torch
def test_anchors_and_rpn_head(stage):
    reference, ours = stage
    np.testing.assert_array_equal(ours["anchors"], reference["tv_anchors"])
    diff, spread = _report("RPN logits", ours["rpn_logits"], reference["tv_rpn_logits"])
    assert diff <= REL_TOL * spread
    diff, spread = _report("RPN deltas", ours["rpn_deltas"], reference["tv_rpn_deltas"])
    assert diff <= REL_TOL * spread


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of (y1, x1, y2, x2) boxes, from the definition."""
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@needs_torch
def test_proposals(stage):
    reference, ours = stage
    matched, total = 0, 0
    for i in range(len(reference["images"])):
        theirs = reference["tv_proposals"][i, :reference["tv_num_proposals"][i]]
        mine = ours["proposals"][i, :ours["num_proposals"][i]]
        close = np.abs(theirs[:, None, :] - mine[None, :, :]).max(axis=2) < 1e-2
        matched += int(close.any(axis=1).sum())
        total += len(theirs)
        # the 50 best are among each other's 60 best (the order may swap where scores nearly tie)
        top = np.abs(theirs[:60, None, :] - mine[None, :60, :]).max(axis=2) < 1e-2
        assert top[:50].any(axis=1).all() and top[:, :50].any(axis=0).all()
    print(f"proposals: {matched} of {total} torchvision proposals found (within 0.01 px)")
    assert matched >= 0.99 * total


@needs_torch
def test_box_head_on_torchvision_proposals(stage):
    reference, ours = stage
    diff, spread = _report("pooled box features", ours["box_pooled"], reference["tv_box_pooled"])
    assert diff <= REL_TOL * spread
    counts = reference["tv_num_proposals"]
    diff, spread = _report("class logits", _valid(ours["class_logits"], counts),
                           _valid(reference["tv_class_logits"], counts))
    assert diff <= REL_TOL * spread
    diff, spread = _report("box deltas", _valid(ours["box_deltas"], counts),
                           _valid(reference["tv_box_deltas"], counts))
    assert diff <= REL_TOL * spread


@needs_torch
def test_detections_on_torchvision_proposals(stage):
    """Same detections as a set: their order may differ where two scores nearly tie."""
    reference, ours = stage
    matched, total, box_diffs, score_diffs = 0, 0, [0.0], [0.0]
    for i in range(len(reference["images"])):
        n, m = reference["tv_num_detections"][i], ours["num_det"][i]
        theirs, mine = reference["tv_det_boxes"][i, :n], ours["det_boxes"][i, :m]
        same = reference["tv_det_labels"][i, :n, None] == ours["det_classes"][i, None, :m]
        diff = np.where(same, np.abs(theirs[:, None] - mine[None]).max(axis=2), np.inf)
        total += n
        for j, k in enumerate(diff.argmin(axis=1) if m else []):
            if diff[j, k] < 1e-2:
                matched += 1
                box_diffs.append(diff[j, k])
                score_diffs.append(abs(reference["tv_det_scores"][i, j] - ours["det_scores"][i, k]))
    print(f"detections for torchvision's proposals: {matched} of {total} matched, max box diff "
          f"{max(box_diffs):.3g} px, max score diff {max(score_diffs):.3g}")
    assert total >= 10 and matched >= 0.99 * total
    assert abs(int(ours["num_det"].sum()) - total) <= 0.01 * total
    assert max(score_diffs) < 1e-3  # softmax of logits that differ by < 1e-3


@needs_torch
def test_mask_head_on_torchvision_detections(stage):
    reference, ours = stage
    counts = reference["tv_num_detections"]
    diff, spread = _report("mask logits", _valid(ours["mask_logits"], counts),
                           _valid(reference["tv_mask_logits"], counts))
    assert diff <= REL_TOL * spread


@needs_torch
@pytest.mark.parametrize("backend", ["tensorflow", *OTHER_BACKENDS])
def test_end_to_end_detections(parity, backend):
    """Converted weights give torchvision's detections on every backend (JAX and PyTorch load
    the model directory TensorFlow wrote: one weights file for all)."""
    reference, ours = parity["v1"]
    finals = ours["final"] if backend == "tensorflow" else parity["backends"][backend]
    matched, total, mask_ious, score_diffs = 0, 0, [], []
    for i, det in enumerate(finals):
        boxes, labels = reference[f"tv_final_boxes{i}"], reference[f"tv_final_labels{i}"]
        masks, scores = reference[f"tv_final_masks{i}"], reference[f"tv_final_scores{i}"]
        total += len(boxes)
        if not len(boxes) or not len(det["boxes"]):
            continue
        iou = _box_iou(boxes, det["boxes"]) * (labels[:, None] == det["labels"][None, :])
        best = iou.argmax(axis=1)
        for j, k in enumerate(best):
            if iou[j, k] >= BOX_MATCH_IOU:
                matched += 1
                inter = np.logical_and(masks[j], det["masks"][k]).sum()
                union = np.logical_or(masks[j], det["masks"][k]).sum()
                mask_ious.append(inter / union if union else 1.0)
                score_diffs.append(abs(float(scores[j]) - float(det["scores"][k])))
    share = matched / max(total, 1)
    print(f"end to end ({backend}): {matched} of {total} torchvision detections matched ({share:.3f}), "
          f"mean mask IoU {np.mean(mask_ious):.5f}, min {np.min(mask_ious):.4f}, "
          f"max score diff {max(score_diffs):.2g}")
    assert total > 20
    assert share >= 0.95
    assert np.mean(mask_ious) >= 0.99


# ================================================================== the resize rule (no torch)


def _torchvision_resized_shape(height: int, width: int, min_size: int, max_size: int):
    """torchvision 0.29 eager `_resize_image_and_masks`: the scale in Python float (float64),
    `F.interpolate(scale_factor=scale, recompute_scale_factor=True)` -> int(size * scale)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def test_resize_rule_matches_torchvision():
    from keras_maskrcnn.transform import compute_resized_shape

    mismatches = []
    for min_size, max_size in ((800, 1333), (320, 512)):
        for height in range(100, 1100, 7):
            for width in (height, height * 4 // 3, height * 3 // 2, 741, 451, 600):
                ours = compute_resized_shape(height, width, min_size, max_size)
                theirs = _torchvision_resized_shape(height, width, min_size, max_size)
                if tuple(ours) != theirs:
                    mismatches.append((height, width, min_size, max_size, ours, theirs))
    assert not mismatches, f"{len(mismatches)} sizes differ, e.g. {mismatches[:3]}"
