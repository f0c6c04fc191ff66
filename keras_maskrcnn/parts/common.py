"""What every part shares: a container layer whose sub-layers are given to its constructor,
serialized by name, and wired by its methods into the model's graphs."""

from __future__ import annotations

from typing import Any

import keras


class Part(keras.layers.Layer):
    """A layer that holds other layers (`SUBLAYERS`, constructor arguments of the same names)
    and wires them in its methods; it is never called itself, so it is built when made."""

    SUBLAYERS: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        sublayers = {name: kwargs.pop(name) for name in self.SUBLAYERS}
        super().__init__(**kwargs)
        for name, layer in sublayers.items():
            setattr(self, name, layer)
        self.built = True

    def replaced(self, **layers: Any) -> Part:
        """A part of the same kind with the named sub-layers replaced (the others shared with
        this part, which should not be used afterwards), e.g.
        `roi_heads.replaced(box_head=MyBoxHead(...))`."""
        unknown = sorted(set(layers) - set(self.SUBLAYERS))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no sub-layer(s) {unknown}; it has "
                             f"{list(self.SUBLAYERS)}")
        current = {name: getattr(self, name) for name in self.SUBLAYERS}
        return type(self)(**{**current, **layers}, **self.extra_config(), name=self.name)

    def extra_config(self) -> dict[str, Any]:
        """Constructor arguments other than the sub-layers (none by default)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.extra_config(),
                **{name: keras.saving.serialize_keras_object(getattr(self, name))
                   for name in self.SUBLAYERS}}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config)
        for name in cls.SUBLAYERS:
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)
