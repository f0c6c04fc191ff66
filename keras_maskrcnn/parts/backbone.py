"""Backbone part: normalized image -> the feature maps the RPN and the RoI heads read."""

from __future__ import annotations

import keras

from keras_maskrcnn.parts.common import Part


@keras.saving.register_keras_serializable(package="keras_maskrcnn")
class Backbone(Part):
    """`body` (`[B, H, W, 3]` -> `[C2, ..., Cn]`, e.g. a ResNet) and an optional `fpn`
    (`[C2..C5]` -> `[P2..P6]`).

    Call: normalized `images [B, H, W, 3]` -> list of feature maps: the FPN's P2..P6 when there
    is one, else the body's last map alone (`[C4]` for the C4 architecture). H and W must be
    multiples of the largest stride (32 for the FPN).

    Weights: `body`, `fpn`.
    """

    def __init__(self, body: keras.Model, fpn: keras.Model | None = None, **kwargs):
        super().__init__(body=body, fpn=fpn, **kwargs)

    SUBLAYERS = ("body", "fpn")

    def call(self, images):
        features = self.body(images)
        features = list(features) if isinstance(features, list | tuple) else [features]
        return self.fpn(features) if self.fpn is not None else features[-1:]

    def compute_output_spec(self, images):
        """The feature maps' shapes from the body's and FPN's graphs, without running them
        (PyTorch would otherwise trace the backbone on real tensors of a stand-in batch)."""
        features = self.body.compute_output_spec(images)
        features = list(features) if isinstance(features, list | tuple) else [features]
        return self.fpn.compute_output_spec(features) if self.fpn is not None \
            else features[-1:]

    def get_config(self):
        config = super().get_config()
        if self.fpn is None:
            config["fpn"] = None
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        body = keras.saving.deserialize_keras_object(config.pop("body"))
        fpn = config.pop("fpn")
        fpn = keras.saving.deserialize_keras_object(fpn) if fpn is not None else None
        return cls(body=body, fpn=fpn, **config)
