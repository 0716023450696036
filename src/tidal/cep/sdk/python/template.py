"""Template of a Tidal CEP operator in Python. Register it with {"source": <this text>}.

`process` gets up to B events: a list of dicts (json codec) or a numpy structured array
(packed codec); it returns the outputs of the same kind. `self.state` is keyed state,
carried across hot updates by `snapshot()` / `restore()` (JSON by default).
"""

from tidal.cep.sdk.python import Operator


class MyOperator(Operator):
    required = ("card", "amount")

    def process(self, batch):
        out = []
        for e in batch:
            k = str(e["card"])
            self.state[k] = self.state.get(k, 0) + 1
            out.append({**e, "flag": int(e["amount"] > 1000), "seen": self.state[k]})
        return out


OPERATOR = MyOperator
