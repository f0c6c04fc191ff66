"""Dataset sources (COCO files, synthetic shapes) and the tf.data input pipeline."""

from keras_maskrcnn.data.coco import CocoDataset
from keras_maskrcnn.data.pipeline import (
    compute_resize_scale,
    compute_resized_shape,
    make_dataset,
    make_inference_inputs,
    make_mini_masks,
    resize_and_pad_image,
)
from keras_maskrcnn.data.shapes import ShapesDataset

__all__ = [
    "CocoDataset",
    "ShapesDataset",
    "compute_resize_scale",
    "compute_resized_shape",
    "make_dataset",
    "make_inference_inputs",
    "make_mini_masks",
    "resize_and_pad_image",
]
