'use strict';
// Tidal CEP operator runtime for Node.js: the same queue protocol and environment contract
// as the Python SDK, over Redis (redis://) or the embedded store (unix://) (see tidal/cep/sdk/python/runtime.py). Usage: node run.js operator.js
// The operator module exports { process(events, state) -> events, required?, emptyState? };
// `state` is a plain object carried across hot updates as JSON.
const path = require('path');
const { Resp } = require('./resp');
const { SockStore } = require('./sockstore');

const env = process.env;
const need = (k) => { if (!env[k]) { console.error(`operator environment lacks ${k}`); process.exit(2); } return env[k]; };
const cfg = {
  store: need('TIDAL_CEP_STORE'), inKey: need('TIDAL_CEP_IN'), outKey: need('TIDAL_CEP_OUT'),
  op: need('TIDAL_CEP_OPERATOR'), inst: env.TIDAL_CEP_INSTANCE || 'node0',
  batch: Number(env.TIDAL_CEP_BATCH || 1000), mode: env.TIDAL_CEP_MODE || 'blob',
  backoffMs: Number(env.TIDAL_CEP_BACKOFF_MS || 0.1), backoffMaxMs: Number(env.TIDAL_CEP_BACKOFF_MAX_MS || 2),
  maxFailures: Number(env.TIDAL_CEP_MAX_FAILURES || 3), standby: env.TIDAL_CEP_STANDBY === '1',
  emptyState: env.TIDAL_CEP_EMPTY_STATE === '1',
  // K > 0: keyed state survives crashes (as the Python SDK): every commit logs the consumed
  // frames, every K-th stores the state ('S' + JSON) and clears the log, atomically with the
  // consumption; a restarted instance restores and replays the log (outputs discarded).
  checkpointEvery: Number(env.TIDAL_CEP_CHECKPOINT_EVERY || 0),
  pop: env.TIDAL_CEP_POP || 'commit',
};
if ((env.TIDAL_CEP_CODEC || 'json') !== 'json') { console.error('Node SDK speaks the json codec only'); process.exit(2); }
const user = require(path.resolve(process.argv[2]));
const K = { tries: `cep:${cfg.op}:tries`, isolate: `cep:${cfg.op}:isolate`, parked: `cep:${cfg.op}:parked`,
  last: `cep:${cfg.op}:last_output`, ckpt: `cep:${cfg.op}:checkpoint`, log: `cep:${cfg.op}:log` };
const checkpointing = cfg.checkpointEvery > 0 && cfg.pop === 'commit';
let commits = 0;
const IK = (i) => ({ ready: `cep:${i}:ready`, go: `cep:${i}:go`, state: `cep:${i}:state`,
  first: `cep:${i}:first_output`, prev: `cep:${i}:prev_last_output`, at: `cep:${i}:handover_at` });
const now = () => Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, same as Python's
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let state = {};
let stop = false;
let firstDone = false;
let lastOut = null;
process.on('SIGTERM', () => { stop = true; });

function decode(frames) {
  const evs = [];
  for (const f of frames) {
    if (f[0] !== 0x4a) throw new Error(`frame kind ${f[0]} is not J (json)`);
    const v = JSON.parse(f.toString('utf8', 1));
    if (Array.isArray(v)) evs.push(...v); else evs.push(v);
  }
  return evs;
}
function encode(evs) {
  if (!evs.length) return [];
  if (cfg.mode === 'blob') return [Buffer.from('J' + JSON.stringify(evs))];
  return evs.map((e) => Buffer.from('J' + JSON.stringify(e)));
}

function processFrames(frames) {
  const evs = decode(frames);
  const good = [];
  const parked = [];
  for (const e of evs) {
    const miss = (user.required || []).find((f) => !(f in e));
    if (miss) parked.push(Buffer.from(JSON.stringify({ event: e, reason: `event is missing field '${miss}'` })));
    else good.push(e);
  }
  return [encode(user.process(good, state) || []), parked];
}

function commitOps(outs, consumed, parked, data) {
  const ops = [];
  if (outs.length) ops.push(['RPUSH', cfg.outKey, ...outs]);
  ops.push(['LTRIM', cfg.inKey, String(consumed), '-1'], ['DEL', K.tries]);
  if (checkpointing && data.length) {
    commits += 1;
    if (commits % cfg.checkpointEvery === 0) ops.push(['SET', K.ckpt, 'S' + JSON.stringify(state)], ['DEL', K.log]);
    else ops.push(['RPUSH', K.log, ...data]);
  }
  if (parked.length) ops.push(['RPUSH', K.parked, ...parked]);
  if (outs.length) {
    const t = now();
    lastOut = t;
    ops.push(['SET', K.last, String(t)]);
    if (!firstDone) { firstDone = true; ops.push(['SET', IK(cfg.inst).first, String(t)]); }
  }
  return ops;
}

async function main() {
  const r = cfg.store.startsWith('unix://') ? new SockStore(cfg.store) : new Resp(cfg.store);
  await r.ready();
  if (!cfg.standby && checkpointing) {  // after a crash: checkpoint + replay of the log
    const [ck, log] = await r.multi([['GET', K.ckpt], ['LRANGE', K.log, '0', '-1']]);
    if (ck && ck[0] === 0x53) state = JSON.parse(ck.toString('utf8', 1));
    if (log && log.length) processFrames(log);
  }
  await r.call(['RPUSH', IK(cfg.inst).ready, '1']);
  if (cfg.standby) {
    for (;;) {
      const go = await r.call(['BLPOP', IK(cfg.inst).go, '1']);
      if (go === null) { if (stop) return r.close(); continue; }
      const g = go[1];
      if (g[0] === 0x53 && !cfg.emptyState && !user.emptyState) {  // 'S' + JSON state
        try { state = JSON.parse(g.toString('utf8', 1)); } catch (e) { state = {}; }
      }
      if (checkpointing) commits = -1;  // the first commit stores this version's checkpoint
      break;
    }
  }
  let empties = 0;
  while (!stop) {
    const [frames, tries, iso] = await r.multi([['LRANGE', cfg.inKey, '0', String(cfg.batch - 1)], ['INCR', K.tries], ['GET', K.isolate]]);
    if (!frames.length) {
      empties++;
      await r.call(['SET', K.tries, '0']);
      await sleep(Math.min(cfg.backoffMs * empties, cfg.backoffMaxMs));
      continue;
    }
    empties = 0;
    let use = frames;
    let isolate = iso === null || iso === undefined ? 0 : Number(iso.toString());
    let left = null;
    if ((tries > 1 || isolate > 0) && frames[0][0] !== 0) {
      // redelivery after a crash: one event at a time, as the Python SDK
      const head = frames[0];
      const evs = decode([head]);
      if (evs.length > 1) {  // re-frame the head blob into single events, keeping the tries
        const singles = evs.map((e) => Buffer.from('J' + JSON.stringify(e)));
        await r.multi([['LTRIM', cfg.inKey, '1', '-1'], ['LPUSH', cfg.inKey, ...singles.reverse()],
          ['SET', K.isolate, String(Math.max(isolate, evs.length))], ['SET', K.tries, String(tries - 1)]]);
        continue;
      }
      if (isolate === 0) isolate = 1;
      left = String(isolate - 1);
      if (tries > cfg.maxFailures) {
        const rec = JSON.stringify({ frame: head.toString('latin1'), reason: `operator '${cfg.op}' failed ${tries - 1} times on this event` });
        await r.multi([['RPUSH', K.parked, rec], ['LTRIM', cfg.inKey, '1', '-1'], ['DEL', K.tries], ['SET', K.isolate, left]]);
        console.error(`tidal-cep: parked a poison event of '${cfg.op}'`);
        continue;
      }
      use = [head];
    }
    let cut = use.findIndex((f) => f[0] === 0);
    const ctrl = cut >= 0 ? use[cut] : null;
    if (cut < 0) cut = use.length;
    const data = use.slice(0, cut);
    const [outs, parked] = processFrames(data);
    const ops = commitOps(outs, cut + (ctrl ? 1 : 0), parked, data);
    if (left !== null) ops.push(['SET', K.isolate, left]);
    let target = null;
    if (ctrl && ctrl[1] === 0x48) target = ctrl.toString('utf8', 2);
    if (target && target !== cfg.inst) {
      const nk = IK(target);
      if (lastOut !== null) ops.push(['SET', nk.prev, String(lastOut)]);
      ops.push(['SET', nk.at, String(now())], ['RPUSH', nk.go, 'S' + JSON.stringify(state)]);
    }
    await r.multi(ops);
    if (target && target !== cfg.inst) break;
  }
  r.close();
}

main().catch((e) => { console.error(`tidal-cep node operator failed: ${e.stack || e}`); process.exit(1); });
