"""Prediction heads: RPN, box and mask, and the C4 architecture's res5 heads."""

from keras_maskrcnn.heads.box_head import BoxHead
from keras_maskrcnn.heads.mask_head import MaskHead
from keras_maskrcnn.heads.res5_head import Res5BoxHead, Res5Head
from keras_maskrcnn.heads.rpn_head import RPNHead

__all__ = ["BoxHead", "MaskHead", "RPNHead", "Res5BoxHead", "Res5Head"]
