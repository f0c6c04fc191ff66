"""Mask R-CNN for TensorFlow 2 / Keras 3.

Importing the package registers every custom Keras object (the `MaskRCNN` model, its layers and
heads, the learning-rate schedule) with `keras.saving`, so that
`keras.saving.load_model("m.keras")` works after a plain `import keras_maskrcnn`.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The `keras-maskrcnn` command imports this package (hence TensorFlow) before its `main` runs:
# hide TensorFlow's C++ start-up lines there unless `--log-level DEBUG` asks for everything.
if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "keras-maskrcnn" \
        and "DEBUG" not in " ".join(_sys.argv).upper():
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_maskrcnn.quiet import filter_native_stderr

    filter_native_stderr()

# JAX: XLA:CPU settings measured faster for this model (`backend.tune_jax_cpu`), before JAX
# creates its devices; a flag already in XLA_FLAGS is left as the user set it.
from keras_maskrcnn.backend import tune_jax_cpu  # noqa: E402

tune_jax_cpu()

# Imported for their `@keras.saving.register_keras_serializable` side effect: the builder
# imports the model, its parts, layers, heads and backbones; the solver holds the learning-rate
# schedule and the optimizer (so that a compiled model's `.keras` file loads too).
from keras_maskrcnn.builder import build_model  # noqa: E402
from keras_maskrcnn.config import MaskRCNNConfig, get_config  # noqa: E402
from keras_maskrcnn.model import MaskRCNN  # noqa: E402
from keras_maskrcnn.saving import load_model_dir, save_model_dir  # noqa: E402
from keras_maskrcnn.solver import WarmupStepDecay  # noqa: E402
from keras_maskrcnn.targets_debug import training_targets  # noqa: E402

__all__ = [
    "MaskRCNN",
    "MaskRCNNConfig",
    "WarmupStepDecay",
    "build_model",
    "get_config",
    "load_model_dir",
    "save_model_dir",
    "training_targets",
]
