"""Prediction heads: RPN, box and mask, the C4 architecture's res5 heads, and their factories from
a `MaskRCNNConfig`."""

from keras_maskrcnn.heads.box_head import BoxHead, box_head_from_config
from keras_maskrcnn.heads.mask_head import MaskHead, mask_head_from_config
from keras_maskrcnn.heads.res5_head import (
    Res5BoxHead,
    Res5Head,
    c4_rpn_head_from_config,
    res5_box_head_from_config,
    res5_head_from_config,
)
from keras_maskrcnn.heads.rpn_head import RPNHead, rpn_head_from_config

__all__ = ["BoxHead", "MaskHead", "RPNHead", "Res5BoxHead", "Res5Head", "box_head_from_config",
           "c4_rpn_head_from_config", "mask_head_from_config", "res5_box_head_from_config",
           "res5_head_from_config", "rpn_head_from_config"]
