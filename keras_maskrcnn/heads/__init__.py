"""Prediction heads: RPN, box and mask."""

from keras_maskrcnn.heads.box_head import BoxHead
from keras_maskrcnn.heads.mask_head import MaskHead
from keras_maskrcnn.heads.rpn_head import RPNHead

__all__ = ["BoxHead", "MaskHead", "RPNHead"]
