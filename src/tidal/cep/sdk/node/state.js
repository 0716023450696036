'use strict';
// Keyed state of a Node.js operator as bytes, for checkpoints and hand-overs.
//   'S' + JSON                      a state without typed arrays (the JSON round trip)
//   'V' + u32 LE json length + JSON + per typed array: u32 LE byte length + its bytes
// In 'V' every top-level value of the state that is a typed array (Float64Array, Int32Array,
// ...) is replaced in the JSON by {"$tidalTyped": "<constructor>", "i": <index>} and carried
// as raw little-endian bytes: a 1 MB Float64Array restores in a copy, not a 1 MB JSON parse.
// Typed arrays nested deeper go through JSON (as objects of indices: keep them top level).
const TYPED = {
  Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array,
  Float32Array, Float64Array, BigInt64Array, BigUint64Array,
};

function packState(state) {
  const arrays = [];
  let shallow = state;
  if (state && typeof state === 'object' && !Array.isArray(state)) {
    for (const [k, v] of Object.entries(state)) {
      if (ArrayBuffer.isView(v) && TYPED[v.constructor.name] === v.constructor) {
        if (shallow === state) shallow = { ...state };
        shallow[k] = { $tidalTyped: v.constructor.name, i: arrays.length };
        arrays.push(v);
      }
    }
  }
  const json = Buffer.from(JSON.stringify(shallow));
  if (!arrays.length) return Buffer.concat([Buffer.from('S'), json]);
  const head = Buffer.alloc(5);
  head.write('V');
  head.writeUInt32LE(json.length, 1);
  const parts = [head, json];
  for (const a of arrays) {
    const n = Buffer.alloc(4);
    n.writeUInt32LE(a.byteLength, 0);
    parts.push(n, Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  }
  return Buffer.concat(parts);
}

// The state in `buf` ('S' or 'V' as above; bytes starting with anything else: plain JSON).
function unpackState(buf) {
  if (buf[0] === 0x53) return JSON.parse(buf.toString('utf8', 1));
  if (buf[0] !== 0x56) return JSON.parse(buf.toString('utf8'));
  const jn = buf.readUInt32LE(1);
  const state = JSON.parse(buf.toString('utf8', 5, 5 + jn));
  const arrays = [];
  for (let pos = 5 + jn; pos < buf.length;) {
    const n = buf.readUInt32LE(pos);
    pos += 4;
    arrays.push(buf.subarray(pos, pos + n));
    pos += n;
  }
  for (const [k, v] of Object.entries(state)) {
    if (v && typeof v === 'object' && typeof v.$tidalTyped === 'string') {
      const Ctor = TYPED[v.$tidalTyped];
      const raw = arrays[v.i];
      if (!Ctor || !raw || raw.length % Ctor.BYTES_PER_ELEMENT) throw new Error(`bad typed state ${k}`);
      const t = new Ctor(raw.length / Ctor.BYTES_PER_ELEMENT);
      new Uint8Array(t.buffer).set(raw);  // a copy: aligned, and independent of `buf`
      state[k] = t;
    }
  }
  return state;
}

module.exports = { packState, unpackState };
