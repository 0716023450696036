'use strict';
// A minimal Redis (RESP2) client: pipelined commands over one TCP connection, no deps.
const net = require('net');

class Resp {
  constructor(url) {
    const u = new URL(url);
    if (u.protocol !== 'redis:') throw new Error(`Node SDK supports redis:// stores, got ${url}`);
    this.db = Number((u.pathname || '/0').slice(1) || 0);
    this.sock = net.createConnection({ host: u.hostname, port: Number(u.port || 6379) });
    this.sock.setNoDelay(true);
    this.buf = Buffer.alloc(0);
    this.waiting = [];
    this.sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this._drain(); });
    this.sock.on('error', (e) => { for (const w of this.waiting) w.reject(e); this.waiting = []; });
  }
  ready() {
    return new Promise((res, rej) => {
      this.sock.once('connect', res);
      this.sock.once('error', rej);
    }).then(() => (this.db ? this.call(['SELECT', String(this.db)]) : null));
  }
  _parse(pos) {
    // returns [value, nextPos] or null when incomplete
    if (pos >= this.buf.length) return null;
    const t = String.fromCharCode(this.buf[pos]);
    const eol = this.buf.indexOf('\r\n', pos);
    if (eol < 0) return null;
    const line = this.buf.toString('utf8', pos + 1, eol);
    if (t === '+') return [line, eol + 2];
    if (t === '-') return [new Error(line), eol + 2];
    if (t === ':') return [Number(line), eol + 2];
    if (t === '$') {
      const n = Number(line);
      if (n < 0) return [null, eol + 2];
      if (this.buf.length < eol + 2 + n + 2) return null;
      return [this.buf.subarray(eol + 2, eol + 2 + n), eol + 2 + n + 2];
    }
    if (t === '*') {
      const n = Number(line);
      if (n < 0) return [null, eol + 2];
      const out = [];
      let p = eol + 2;
      for (let i = 0; i < n; i++) {
        const r = this._parse(p);
        if (r === null) return null;
        out.push(r[0]);
        p = r[1];
      }
      return [out, p];
    }
    throw new Error(`bad RESP type ${t}`);
  }
  _drain() {
    while (this.waiting.length) {
      const r = this._parse(0);
      if (r === null) return;
      this.buf = this.buf.subarray(r[1]);
      const w = this.waiting.shift();
      if (r[0] instanceof Error) w.reject(r[0]); else w.resolve(r[0]);
    }
  }
  _encode(args) {
    const parts = [Buffer.from(`*${args.length}\r\n`)];
    for (const a of args) {
      const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
      parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
    }
    return Buffer.concat(parts);
  }
  call(args) {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.sock.write(this._encode(args));
    });
  }
  // MULTI ... EXEC: resolves to EXEC's array of replies
  async multi(cmds) {
    const ps = [this.call(['MULTI']), ...cmds.map((c) => this.call(c)), this.call(['EXEC'])];
    const res = await Promise.all(ps);
    return res[res.length - 1];
  }
  close() { this.sock.end(); }
}

module.exports = { Resp };
