"""The Python operator SDK: subclass `Operator`, run with `tidal.cep.sdk.python.runtime`."""

from tidal.cep.sdk.python.operator import DenseKeyedState, Operator, load_operator

__all__ = ["DenseKeyedState", "Operator", "load_operator"]
