"""Mixed precision: the five losses on a fixed batch agree with float32, and 30 steps of a small
shapes model converge like float32. Subprocesses, because the dtype policy is process-global."""

import json
import os
import subprocess
import sys

import pytest

from keras_maskrcnn.runtime import cpu_has_bf16, resolve_precision

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_MASKRCNN_DISABLE_CUSTOM_OP": "1"}

SCRIPT = r"""
import json, sys
import keras
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
from keras_maskrcnn.builder import build_model
from keras_maskrcnn.runtime import RunEnvironment
from keras_maskrcnn.training import train

policy, out_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = get_config("shapes", image_size=(64, 64), min_size=64, max_size=64,
                    tiny_widths=(8, 16, 16, 32), fpn_channels=32, box_head_dim=64,
                    mask_head_dim=16, anchor_sizes=(8, 16, 32, 64, 128), warmup_steps=5)
source = ShapesDataset(num_images=64, image_size=64, seed=0)
batch = next(iter(make_dataset(source, config, training=True, batch_size=2, seed=0)))[0]
keras.utils.set_random_seed(0)
reference = build_model(config)
fixed32 = {k: float(v) for k, v in reference.compute_losses(batch).items()}
env = RunEnvironment.create(precision=policy)
low = build_model(config)
low.inference_graph().set_weights(reference.inference_graph().get_weights())
fixed = {k: float(v) for k, v in low.compute_losses(batch).items()}
records = []
train(config, source, out_dir, max_steps=steps, steps_per_epoch=steps // 5, batch_size=2,
      seed=0, env=env, callbacks=[records.append], print_fn=lambda s: None)
print("RESULT " + json.dumps({"fixed32": fixed32, "fixed": fixed, "epochs": records,
                              "precision": env.precision}))
"""


def run_policy(tmp_path, policy, steps=30):
    result = subprocess.run([sys.executable, "-c", SCRIPT, policy, str(tmp_path / policy),
                             str(steps)], capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def float32_run(tmp_path_factory):
    return run_policy(tmp_path_factory.mktemp("fp32"), "float32")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_losses_and_convergence(tmp_path, float32_run, policy):
    if policy == "mixed_bfloat16" and not cpu_has_bf16() and not os.environ.get("CI"):
        pytest.skip("this CPU has no native bf16 (AVX512_BF16/AMX): bf16 runs ~10x slower")
    out = run_policy(tmp_path, policy)
    assert out["precision"] == policy
    # Fixed batch, same weights: bf16 keeps 8 mantissa bits (fp16 10), losses stay in float32.
    tolerance = 0.02 if policy == "mixed_bfloat16" else 0.005
    for name, value in out["fixed32"].items():
        assert abs(out["fixed"][name] - value) <= tolerance * max(abs(value), 0.05), name
    # 30 steps: the loss falls like float32's (final epoch mean within 15 %).
    first, last = out["epochs"][0]["loss"], out["epochs"][-1]["loss"]
    ref_first, ref_last = float32_run["epochs"][0]["loss"], float32_run["epochs"][-1]["loss"]
    assert last < first and ref_last < ref_first
    assert abs(last - ref_last) <= 0.15 * ref_last, (last, ref_last)


def test_auto_precision_follows_the_cpu():
    expected = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    assert resolve_precision("auto") == expected
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float8")
