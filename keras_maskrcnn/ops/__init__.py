"""Pure tensor functions: boxes, anchors, NMS, RoIAlign / RoIPool, poolers, masks, sampling.

`keras_maskrcnn.ops.roi_align` and `keras_maskrcnn.ops.roi_pool` are the functions; their
modules are `ops.roi_align_ops` and `ops.roi_pool_ops` (named apart so that no module is
shadowed by a function). `ops.roi_common` is internal (argument checks and helpers shared by
the RoI ops).
"""

from keras_maskrcnn.ops.anchors import anchors_per_level, generate_anchors
from keras_maskrcnn.ops.boxes import (
    box_area,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    pairwise_ioa,
    pairwise_iou,
)
from keras_maskrcnn.ops.masks import crop_mask_targets
from keras_maskrcnn.ops.nms import batched_nms_padded, grouped_nms_padded, nms_padded
from keras_maskrcnn.ops.paste import paste_masks
from keras_maskrcnn.ops.poolers import assign_fpn_levels, multilevel_roi_align
from keras_maskrcnn.ops.roi_align_ops import roi_align
from keras_maskrcnn.ops.roi_pool_ops import roi_pool

__all__ = [
    "anchors_per_level",
    "assign_fpn_levels",
    "batched_nms_padded",
    "box_area",
    "clip_boxes",
    "crop_mask_targets",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "grouped_nms_padded",
    "multilevel_roi_align",
    "nms_padded",
    "pairwise_ioa",
    "pairwise_iou",
    "paste_masks",
    "roi_align",
    "roi_pool",
]
