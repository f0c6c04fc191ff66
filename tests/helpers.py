"""Small helpers shared by test modules (imported as `helpers`; tests/ is on sys.path)."""

import numpy as np


def noise_rect_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rectangles on a noise background: a flat background gives equal features, hence exactly
    tied scores at many anchors, which kernels with other summation orders break differently."""
    image = rng.integers(0, 80, (height, width, 3)).astype(np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
        image[y:y + rng.integers(10, 20), x:x + rng.integers(10, 20)] = rng.integers(80, 255, 3)
    return image


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix `[N, M]` of boxes (y1, x1, y2, x2)."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)

    def area(z):
        return np.prod(z[:, 2:] - z[:, :2], axis=-1)

    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def compare_with_keras(model, image_files, make_inputs, run_other, match_iou: float) -> dict:
    """An exported model against the Keras model on photos, detection by detection.

    `make_inputs(image)` -> the letterboxed batch both run on; `run_other(inputs)` -> the
    exported model's outputs (the Keras graph's names and shapes). Returns `total` (Keras
    detections), `matched` (same class, box IoU >= `match_iou`), the largest `box_diff`,
    `score_diff`, `prob_diff` over matched pairs and their pasted `mask_ious`.
    """
    from PIL import Image

    from keras_maskrcnn.inference import postprocess, run_model

    threshold = model.config.mask_threshold
    stats = {"total": 0, "matched": 0, "box_diff": 0.0, "score_diff": 0.0, "prob_diff": 0.0,
             "mask_ious": []}
    for file in image_files:
        inputs = make_inputs(np.asarray(Image.open(file).convert("RGB")))
        ref, out = run_model(model, inputs), run_other(inputs)
        assert out["detection_boxes"].shape == ref["detection_boxes"].shape
        assert out["detection_classes"].dtype == np.int32
        n, m = int(ref["num_detections"][0]), int(out["num_detections"][0])
        assert abs(n - m) <= 1, file.name
        stats["total"] += n
        if not (n and m):
            continue
        ref_px, out_px = postprocess(ref, inputs, 0, threshold), postprocess(out, inputs, 0, threshold)
        iou = box_iou(ref["detection_boxes"][0, :n], out["detection_boxes"][0, :m])
        iou *= ref["detection_classes"][0, :n, None] == out["detection_classes"][0, None, :m]
        for i in range(n):
            j = int(iou[i].argmax())
            if iou[i, j] < match_iou:
                continue
            stats["matched"] += 1
            for key, name in (("box_diff", "detection_boxes"), ("score_diff", "detection_scores"),
                              ("prob_diff", "detection_masks")):
                diff = float(np.abs(np.asarray(ref[name][0, i], np.float64)
                                    - np.asarray(out[name][0, j], np.float64)).max())
                stats[key] = max(stats[key], diff)
            stats["mask_ious"].append(mask_iou(ref_px["masks"][i], out_px["masks"][j]))
    return stats


# XLA:CPU compiles the tests' tiny JAX programs about 40% faster at LLVM optimization level 0
# (the same HLO; tests/portable/test_model.py on JAX: 68 s -> 42 s), for the tests that compare
# with tolerances (`fast_compile`). Not for the comparisons with TensorFlow's own numbers: the
# rounding differs enough there to flip a near-tie of the RoI sampler (class loss 2.5e-3 off).
# Users run JAX's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def backend_env(backend: str, block_tensorflow: bool = True, fast_compile: bool = False) -> dict:
    """The environment of a test subprocess on the Keras `backend`: this checkout importable,
    TensorFlow blocked unless `block_tensorflow` is False, and with `fast_compile` on JAX
    `TEST_XLA_FLAGS` (the session's persistent compilation cache, JAX_COMPILATION_CACHE_DIR,
    comes from conftest)."""
    import os
    from pathlib import Path

    env = {**os.environ, "KERAS_BACKEND": backend,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    if block_tensorflow:
        env["KERAS_MASKRCNN_BLOCK_TENSORFLOW"] = "1"
    if backend == "jax" and fast_compile:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
    return env


def run_backend_worker(backend: str, *arguments, timeout: int = 600):
    """`tests/backend_worker.py ARGUMENTS` in a process on the Keras `backend`, TensorFlow
    blocked there (as on a machine without it); the completed process (asserted rc 0)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "tests" / "backend_worker.py"),
                           *map(str, arguments)], cwd=root, env=backend_env(backend),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, \
        f"{backend} worker exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def block_tensorflow() -> None:
    """Makes this process behave as on a machine without TensorFlow: `import tensorflow` raises
    ModuleNotFoundError, and `importlib.util.find_spec` still answers (a spec whose loader
    fails, so that libraries probing for TensorFlow, e.g. torch._dynamo, do not crash)."""
    import importlib.abc
    import importlib.machinery
    import sys

    class Missing(importlib.abc.Loader):
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (TensorFlow is blocked: "
                                      "this process runs as on a machine without it)",
                                      name=spec.name)

        def exec_module(self, module):  # never reached
            raise ModuleNotFoundError(module.__name__)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == "tensorflow" or fullname.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(fullname, Missing())
            return None

    sys.meta_path.insert(0, Blocker())
