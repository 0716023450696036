'use strict';
// Node.js client of the node manager's event endpoint (docs/cep-protocol.md, "HTTP events"):
// push events with POST (retrying on 429), read results as Server-Sent Events, or both over
// one WebSocket (Node >= 22, or Node 20 with --experimental-websocket). No npm dependency.
//
//   TIDAL_CEP_TOKEN=... node client.js push http://127.0.0.1:8470 op < events.jsonl
//   TIDAL_CEP_TOKEN=... node client.js tail http://127.0.0.1:8470 op [limit] [idleSeconds]
//   TIDAL_CEP_TOKEN=... node client.js ws   http://127.0.0.1:8470 op limit < events.jsonl
// `tail` and `ws` print one result per line (JSON).

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class TidalCepClient {
  constructor(url, token) {
    this.url = url.replace(/\/$/, '');
    this.headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
  }

  // POST events in chunks; on 429 wait and retry the same chunk. Resolves to the count.
  async push(op, events, chunk = 1000) {
    let accepted = 0;
    for (let i = 0; i < events.length; i += chunk) {
      const body = JSON.stringify({ events: events.slice(i, i + chunk) });
      for (let tries = 1; ; tries++) {
        const r = await fetch(`${this.url}/v1/operators/${op}/events`, { method: 'POST', headers: this.headers, body });
        if (r.status === 429 && tries < 1000) { await sleep(Math.min(10 * tries, 1000)); continue; }
        const v = await r.json();
        if (!r.ok) throw new Error(`node manager: ${v.error} (HTTP ${r.status})`);
        accepted += v.accepted;
        break;
      }
    }
    return accepted;
  }

  // Server-Sent Events: calls onResults(events, firstId) per message; resolves when the
  // stream ends (after `limit` results or `idleS` idle seconds, when given).
  async tail(op, onResults, { after = 0, limit = 0, idleS = 0 } = {}) {
    const q = `after=${after}&limit=${limit}&idle_s=${idleS}`;
    const r = await fetch(`${this.url}/v1/operators/${op}/results?${q}`, { headers: this.headers });
    if (!r.ok) throw new Error(`node manager: HTTP ${r.status} ${await r.text()}`);
    const dec = new TextDecoder();
    let buf = '';
    for await (const chunk of r.body) {
      buf += dec.decode(chunk, { stream: true });
      let k;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const msg = buf.slice(0, k);
        buf = buf.slice(k + 2);
        let kind = 'message';
        let data = '';
        for (const line of msg.split('\n')) {
          if (line.startsWith('event: ')) kind = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (!data) continue;
        const v = JSON.parse(data);
        if (kind === 'gap') console.error(`tidal-cep: ${v.missed} results missed`);
        else if (kind === 'results') onResults(v.events, v.first);
      }
    }
  }

  // WebSocket: pushes `events`, resolves with the first `limit` results.
  ws(op, events, limit) {
    if (typeof WebSocket === 'undefined') throw new Error('no WebSocket: use Node >= 22 or --experimental-websocket');
    const wsUrl = `${this.url.replace(/^http/, 'ws')}/v1/operators/${op}/ws`;
    const sock = new WebSocket(wsUrl, { headers: { Authorization: this.headers.Authorization } });
    const got = [];
    return new Promise((resolve, reject) => {
      sock.onerror = (e) => reject(new Error(`websocket error: ${e.message || e.type}`));
      sock.onopen = () => sock.send(JSON.stringify({ events }));
      sock.onmessage = (m) => {
        const v = JSON.parse(m.data);
        if (v.error) { reject(new Error(`node manager: ${v.error} (${v.status})`)); sock.close(); return; }
        if (v.events) got.push(...v.events);
        if (got.length >= limit) { sock.close(); resolve(got.slice(0, limit)); }
      };
    });
  }
}

async function readStdinEvents() {
  let text = '';
  for await (const c of process.stdin) text += c;
  text = text.trim();
  if (text.startsWith('[')) return JSON.parse(text);
  return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

async function main() {
  const [cmd, url, op, a, b] = process.argv.slice(2);
  const token = process.env.TIDAL_CEP_TOKEN;
  if (!cmd || !url || !op || !token) {
    console.error('usage: TIDAL_CEP_TOKEN=... node client.js push|tail|ws URL OPERATOR [limit] [idleSeconds]');
    process.exit(2);
  }
  const c = new TidalCepClient(url, token);
  if (cmd === 'push') {
    const n = await c.push(op, await readStdinEvents());
    console.log(JSON.stringify({ accepted: n }));
  } else if (cmd === 'tail') {
    await c.tail(op, (evs) => { for (const e of evs) console.log(JSON.stringify(e)); },
      { limit: Number(a || 0), idleS: Number(b || 0) });
  } else if (cmd === 'ws') {
    const res = await c.ws(op, await readStdinEvents(), Number(a || 0));
    for (const e of res) console.log(JSON.stringify(e));
  } else {
    console.error(`unknown command ${cmd}`);
    process.exit(2);
  }
}

module.exports = { TidalCepClient };
if (require.main === module) main().catch((e) => { console.error(String(e.stack || e)); process.exit(1); });
