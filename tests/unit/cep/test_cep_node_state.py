"""The Node.js SDK's state packing (sdk/node/state.js): top-level typed arrays travel as raw
bytes and come back as the same type and values; everything else is JSON; a truncated or
mistyped typed-array record is refused, not restored as garbage."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

STATE_JS = Path(__file__).parents[3] / "src" / "tidal" / "cep" / "sdk" / "node" / "state.js"

SCRIPT = """
const { packState, unpackState } = require(process.argv[1]);
const s = {
  c: new Float64Array([1.5, -2, 3e9]), i: new Int32Array([7, -8]), o: { a: [1, 2] }, n: 4,
};
const p = packState(s);
const r = unpackState(p);
const plain = packState({ o: { a: [1] } });
const at = 5 + p.readUInt32LE(1);  // the first typed array's byte length
const bad = Buffer.from(p);
bad.writeUInt32LE(bad.readUInt32LE(at) - 3, at);
let refused = false;
try { unpackState(bad); } catch (e) { refused = true; }
console.log(JSON.stringify({
  tag: String.fromCharCode(p[0]), plainTag: String.fromCharCode(plain[0]),
  c: [r.c.constructor.name, Array.from(r.c)], i: [r.i.constructor.name, Array.from(r.i)],
  o: r.o, n: r.n, legacy: unpackState(Buffer.from('{"x":1}')), refused,
  untouched: s.c instanceof Float64Array,
}));
"""


@pytest.mark.node
def test_typed_arrays_round_trip_as_bytes() -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is not installed (apt-get install nodejs)"
    out = subprocess.run(
        [node, "-e", SCRIPT, str(STATE_JS)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    r = json.loads(out)
    assert r["tag"] == "V" and r["plainTag"] == "S"
    assert r["c"] == ["Float64Array", [1.5, -2, 3e9]]
    assert r["i"] == ["Int32Array", [7, -8]]
    assert r["o"] == {"a": [1, 2]} and r["n"] == 4
    assert r["legacy"] == {"x": 1}  # a bare JSON state (older checkpoints) still loads
    assert r["refused"] is True and r["untouched"] is True
