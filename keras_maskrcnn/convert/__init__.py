"""Weight converters from other frameworks (torchvision) to keras-maskrcnn model directories."""

from keras_maskrcnn.convert.torchvision import convert_torchvision, load_torchvision_weights

__all__ = ["convert_torchvision", "load_torchvision_weights"]
