"""The parts a `MaskRCNN` is assembled from (torchvision's `GeneralizedRCNN`, Detectron2's
`StandardROIHeads` / `Res5ROIHeads`): `Backbone` (image -> feature maps), `RPN` (anchors, head,
proposals, anchor targets and loss) and the RoI heads, `StandardRoIHeads` (FPN) or
`Res5RoIHeads` (C4), each with an inference and a training entry point. Parts take their layers
as constructor arguments and never read a config: `keras_maskrcnn.builder` makes them from one.
"""

from keras_maskrcnn.parts.backbone import Backbone
from keras_maskrcnn.parts.roi_heads import Res5RoIHeads, StandardRoIHeads
from keras_maskrcnn.parts.rpn import RPN

__all__ = ["RPN", "Backbone", "Res5RoIHeads", "StandardRoIHeads"]
