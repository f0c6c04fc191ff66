"""tf.distribute on the CPU: `mirrored` over 2 logical devices equals one device at the same
global batch and seed; `multi_worker` with 2 local processes trains and the chief alone writes
the model directory. Each run is a subprocess with a time limit."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_maskrcnn.config import get_config

TIMEOUT = 420
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_MASKRCNN_DISABLE_CUSTOM_OP": "1"}


# torchvision's training-target conventions: RPN losses over the anchors sampled in the global
# batch (a cross-replica count), soft full-resolution mask targets, floor quotas.
# Every anchor sampled: the per-image counts differ, so a per-replica normalization would show.
TORCHVISION_TARGETS = dict(rpn_loss_normalizer="sampled", mask_target_rule="torchvision",
                           sampler_quota_rounding="floor", rpn_batch_per_image=100_000)


def tiny_config(path, **overrides):
    # GroupNorm: per-replica BatchNorm statistics would differ from one device's by design.
    values = dict(image_size=(64, 64), min_size=64, max_size=64, tiny_widths=(8, 8, 16, 16),
                  fpn_channels=16, box_head_dim=32, mask_head_dim=8, mask_head_convs=1,
                  anchor_sizes=(8, 16, 32, 64, 128), backbone_norm="gn",
                  rpn_pre_nms_topk_train=200, rpn_post_nms_topk_train=64,
                  roi_batch_per_image=32, rpn_batch_per_image=64, warmup_steps=1)
    config = get_config("shapes", **{**values, **overrides})
    config.to_json(path)
    return path


MIRRORED = r"""
import json, sys
from keras_maskrcnn.runtime import RunEnvironment
mirrored = RunEnvironment.create("mirrored", cpu_devices=2)
single = RunEnvironment.create("one_device")
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset
from keras_maskrcnn.training import train
config = get_config(sys.argv[1])
source = ShapesDataset(num_images=8, image_size=64, seed=0)
out = {}
for name, env in (("mirrored", mirrored), ("single", single)):
    records = []
    train(config, source, sys.argv[2] + "/" + name, max_steps=3, steps_per_epoch=1,
          batch_size=2, seed=5, env=env, callbacks=[records.append], print_fn=lambda s: None)
    out[name] = records
    out[name + "_replicas"] = env.strategy.num_replicas_in_sync
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("targets", [pytest.param("detectron2", marks=pytest.mark.slow), "torchvision"])
def test_mirrored_two_devices_equals_one_device(tmp_path, targets):
    overrides = TORCHVISION_TARGETS if targets == "torchvision" else {}
    config = tiny_config(tmp_path / "tiny.json", **overrides)
    result = subprocess.run([sys.executable, "-c", MIRRORED, str(config), str(tmp_path)],
                            capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["mirrored_replicas"] == 2 and out["single_replicas"] == 1
    names = ("loss", "rpn_objectness_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
    for a, b in zip(out["mirrored"], out["single"], strict=True):
        for name in names:
            np.testing.assert_allclose(a[name], b[name], rtol=2e-4, atol=1e-6, err_msg=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_local_processes(tmp_path):
    config = tiny_config(tmp_path / "tiny.json")
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}})}
        out = tmp_path / ("run" if index == 0 else "worker1")
        cmd = [sys.executable, "-m", "keras_maskrcnn.cli", "train", "--dataset", "shapes",
               "--shapes-train-images", "8", "--shapes-image-size", "64", "--config",
               str(config), "--strategy", "multi_worker", "--batch-size", "2", "--max-steps",
               "3", "--seed", "1", "--output", str(out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, text in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, text[-4000:]
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in outputs[0], outputs[0][-3000:]
    assert (tmp_path / "run" / "model.weights.h5").exists()
    assert not (tmp_path / "worker1" / "model.weights.h5").exists()
    from keras_maskrcnn.saving import load_model_dir

    load_model_dir(tmp_path / "run")
