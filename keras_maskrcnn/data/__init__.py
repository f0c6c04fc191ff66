"""Dataset sources (COCO files, synthetic shapes) and the tf.data input pipeline."""

from keras_maskrcnn.data.coco import CocoDataset
from keras_maskrcnn.data.images import BadImageError, load_rgb_image
from keras_maskrcnn.data.pipeline import (
    distributed_dataset,
    make_dataset,
    make_inference_inputs,
    make_mini_masks,
    num_batches,
)
from keras_maskrcnn.data.shapes import ScatteredShapesDataset, ShapesDataset

__all__ = [
    "BadImageError",
    "CocoDataset",
    "ScatteredShapesDataset",
    "ShapesDataset",
    "distributed_dataset",
    "make_dataset",
    "make_inference_inputs",
    "make_mini_masks",
    "num_batches",
    "load_rgb_image",
]
