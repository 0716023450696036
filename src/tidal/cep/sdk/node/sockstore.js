'use strict';
// Client of Tidal's embedded store (tidal/cep/sockstore.py) over a unix socket, with the same
// call()/multi() interface as resp.js. Messages: u32 LE length + tagged values
// (N T F I(int64) D(float64) B(bytes) S(str) L(list)); never pickle.
const net = require('net');

function enc(v, out) {
  if (v === null || v === undefined) out.push(Buffer.from('N'));
  else if (v === true) out.push(Buffer.from('T'));
  else if (v === false) out.push(Buffer.from('F'));
  else if (typeof v === 'number' && Number.isInteger(v)) {
    const b = Buffer.alloc(9); b.write('I'); b.writeBigInt64LE(BigInt(v), 1); out.push(b);
  } else if (typeof v === 'number') {
    const b = Buffer.alloc(9); b.write('D'); b.writeDoubleLE(v, 1); out.push(b);
  } else if (Buffer.isBuffer(v) || typeof v === 'string') {
    const data = Buffer.isBuffer(v) ? v : Buffer.from(v);
    const h = Buffer.alloc(5); h.write(Buffer.isBuffer(v) ? 'B' : 'S'); h.writeUInt32LE(data.length, 1);
    out.push(h, data);
  } else if (Array.isArray(v)) {
    const h = Buffer.alloc(5); h.write('L'); h.writeUInt32LE(v.length, 1); out.push(h);
    for (const x of v) enc(x, out);
  } else throw new Error(`cannot encode ${typeof v}`);
}

function dec(buf, pos) {
  const t = String.fromCharCode(buf[pos]); pos += 1;
  if (t === 'N') return [null, pos];
  if (t === 'T') return [true, pos];
  if (t === 'F') return [false, pos];
  if (t === 'I') return [Number(buf.readBigInt64LE(pos)), pos + 8];
  if (t === 'D') return [buf.readDoubleLE(pos), pos + 8];
  if (t === 'B' || t === 'S') {
    const n = buf.readUInt32LE(pos); pos += 4;
    const raw = buf.subarray(pos, pos + n);
    return [t === 'B' ? Buffer.from(raw) : raw.toString('utf8'), pos + n];
  }
  if (t === 'L') {
    const n = buf.readUInt32LE(pos); pos += 4;
    const out = [];
    for (let i = 0; i < n; i++) { const r = dec(buf, pos); out.push(r[0]); pos = r[1]; }
    return [out, pos];
  }
  throw new Error(`bad tag ${t}`);
}

// RESP-style command arrays -> store ops of tidal.cep.store
function toOp(cmd) {
  const c = String(cmd[0]).toLowerCase();
  if (c === 'rpush' || c === 'lpush') return [c, cmd[1], cmd.slice(2).map((x) => (Buffer.isBuffer(x) ? x : Buffer.from(String(x))))];
  if (c === 'lrange' || c === 'ltrim') return [c, cmd[1], Number(cmd[2]), Number(cmd[3])];
  if (c === 'set') return [c, cmd[1], Buffer.isBuffer(cmd[2]) ? cmd[2] : Buffer.from(String(cmd[2]))];
  return [c, cmd[1]];
}

class SockStore {
  constructor(url) {
    this.path = url.slice('unix://'.length);
    this.sock = net.createConnection({ path: this.path });
    this.buf = Buffer.alloc(0);
    this.waiting = [];
    this.sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this._drain(); });
    this.sock.on('error', (e) => { for (const w of this.waiting) w.reject(e); this.waiting = []; });
  }
  ready() {
    return new Promise((res, rej) => { this.sock.once('connect', res); this.sock.once('error', rej); });
  }
  _drain() {
    while (this.waiting.length && this.buf.length >= 4) {
      const n = this.buf.readUInt32LE(0);
      if (this.buf.length < 4 + n) return;
      const [msg] = dec(this.buf.subarray(4, 4 + n), 0);
      this.buf = this.buf.subarray(4 + n);
      const w = this.waiting.shift();
      if (msg[0] === 'ok') w.resolve(msg[1]); else w.reject(new Error(String(msg[1])));
    }
  }
  _req(req) {
    const parts = [];
    enc(req, parts);
    const body = Buffer.concat(parts);
    const len = Buffer.alloc(4); len.writeUInt32LE(body.length, 0);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.sock.write(Buffer.concat([len, body]));
    });
  }
  async call(cmd) {
    const c = String(cmd[0]).toUpperCase();
    if (c === 'BLPOP') {
      const v = await this._req(['b', cmd[1], Number(cmd[2])]);
      return v === null ? null : [cmd[1], v];
    }
    return (await this._req(['x', [toOp(cmd)]]))[0];
  }
  multi(cmds) { return this._req(['x', cmds.map(toOp)]); }
  close() { this.sock.end(); }
}

module.exports = { SockStore, enc, dec };
