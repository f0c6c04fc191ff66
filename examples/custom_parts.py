"""A Mask R-CNN assembled from parts, two of them your own: a custom backbone body and a custom
box predictor, with the rest made by the builder from a config. Trains a few steps on the
built-in shapes set with `model.fit`, then predicts.

    python examples/custom_parts.py [--steps 20]

`MaskRCNN(normalizer, backbone, rpn, roi_heads, config)` wires whatever parts it is given; a
part only has to keep the contract of the one it replaces (shapes in each docstring):

- a backbone body: `[B, H, W, 3]` normalized image -> `[C2, C3, C4, C5]` at strides 4..32,
  wrapped with the FPN by `parts.Backbone`;
- a box head: pooled RoIs `[B, R, P, P, C]` -> `(class_logits [B, R, K + 1], deltas [B, R, K, 4])`.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from keras_maskrcnn.backbones import build_fpn
from keras_maskrcnn.builder import build_normalizer, build_roi_heads, build_rpn
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
from keras_maskrcnn.inference import predict_images
from keras_maskrcnn.model import MaskRCNN
from keras_maskrcnn.parts import Backbone


def small_cnn(widths=(16, 32, 48, 64)) -> keras.Model:
    """A plain CNN with four outputs at strides 4, 8, 16, 32 (the FPN's C2..C5)."""
    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(widths[0], 3, strides=2, padding="same", activation="relu")(image)
    outputs = []
    for width in widths:
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        outputs.append(x)
    return keras.Model(image, outputs, name="body")


@keras.saving.register_keras_serializable(package="examples")
class MeanPoolBoxHead(keras.layers.Layer):
    """Averages each pooled RoI, one hidden layer, then class logits and class deltas."""

    def __init__(self, num_classes: int, hidden: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden = keras.layers.Dense(hidden, activation="relu")
        self.class_logits = keras.layers.Dense(num_classes + 1)
        self.box_deltas = keras.layers.Dense(
            4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def call(self, pooled):
        x = self.hidden(keras.ops.mean(pooled, axis=(2, 3)))  # [B, R, C]
        deltas = self.box_deltas(x)
        shape = keras.ops.shape(deltas)
        return self.class_logits(x), keras.ops.reshape(deltas, (shape[0], shape[1], self.num_classes, 4))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def build(config) -> MaskRCNN:
    body = small_cnn()
    backbone = Backbone(body=body, fpn=build_fpn([o.shape[-1] for o in body.outputs],
                                                 channels=config.fpn_channels), name="backbone")
    roi_heads = build_roi_heads(config).replaced(box_head=MeanPoolBoxHead(config.num_classes))
    return MaskRCNN(normalizer=build_normalizer(config), backbone=backbone,
                    rpn=build_rpn(config), roi_heads=roi_heads, config=config)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    config = get_config("shapes", image_size=(64, 64), min_size=64, max_size=64, batch_size=2)
    model = build(config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    data = make_dataset(ShapesDataset(num_images=8, image_size=64, seed=0), config,
                        training=True, batch_size=2)
    initial = np.array(model.roi_heads.box_head.hidden.kernel.value)
    history = model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    image = ShapesDataset(num_images=1, image_size=64, seed=1).load_image(0)
    detections = predict_images(model, [image])[0]
    losses = {k: float(v[-1]) for k, v in history.history.items()}
    print(f"losses after {args.steps} steps: {losses}")
    print(f"{len(detections['boxes'])} detections, masks {detections['masks'].shape}")
    return {"losses": losses, "detections": detections, "model": model,
            "initial_box_kernel": initial}


if __name__ == "__main__":
    main()
