"""Forward: every event out unchanged (the transport's own cost)."""

from tidal.cep.sdk.python import Operator


class Forward(Operator):
    pass


OPERATOR = Forward
