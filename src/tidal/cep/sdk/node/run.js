'use strict';
// Tidal CEP operator runtime for Node.js: the same queue protocol and environment contract
// as the Python SDK, over Redis (redis://) or the embedded store (unix://) (see tidal/cep/sdk/python/runtime.py). Usage: node run.js operator.js
// The operator module exports { process(events, state) -> events, required?, emptyState? };
// `state` is a plain object carried across hot updates and checkpoints as JSON, except its
// top-level typed arrays, carried as raw bytes (state.js).
const path = require('path');
const { Resp } = require('./resp');
const fs = require('fs');
const { SockStore, enc, dec } = require('./sockstore');
const { packState, unpackState } = require('./state');

const env = process.env;
const need = (k) => { if (!env[k]) { console.error(`operator environment lacks ${k}`); process.exit(2); } return env[k]; };
// The operator contract, read from the environment (again at an in-process update, step 7b
// of docs/cep-protocol.md: the new version may change B, N, K or the pop mode).
const readCfg = () => ({
  store: need('TIDAL_CEP_STORE'), inKey: need('TIDAL_CEP_IN'), outKey: need('TIDAL_CEP_OUT'),
  op: need('TIDAL_CEP_OPERATOR'), inst: env.TIDAL_CEP_INSTANCE || 'node0',
  batch: Number(env.TIDAL_CEP_BATCH || 1000), mode: env.TIDAL_CEP_MODE || 'blob',
  backoffMs: Number(env.TIDAL_CEP_BACKOFF_MS || 0.1), backoffMaxMs: Number(env.TIDAL_CEP_BACKOFF_MAX_MS || 2),
  maxFailures: Number(env.TIDAL_CEP_MAX_FAILURES || 3), standby: env.TIDAL_CEP_STANDBY === '1',
  emptyState: env.TIDAL_CEP_EMPTY_STATE === '1',
  // K > 0: keyed state survives crashes (as the Python SDK): every commit logs the consumed
  // frames; once K events were consumed since the last checkpoint, the commit stores the state
  // ('S' + JSON) and clears the log instead, atomically with the consumption; a restarted
  // instance restores and replays the log (outputs discarded): fewer than K events.
  checkpointEvery: Number(env.TIDAL_CEP_CHECKPOINT_EVERY || 0),
  pop: env.TIDAL_CEP_POP || 'commit',
});
let cfg = readCfg();
if ((env.TIDAL_CEP_CODEC || 'json') !== 'json') { console.error('Node SDK speaks the json codec only'); process.exit(2); }
let user = require(path.resolve(process.argv[2]));
let userPath = require.resolve(path.resolve(process.argv[2]));
const K = { tries: `cep:${cfg.op}:tries`, isolate: `cep:${cfg.op}:isolate`, parked: `cep:${cfg.op}:parked`,
  last: `cep:${cfg.op}:last_output`, ckpt: `cep:${cfg.op}:checkpoint`, log: `cep:${cfg.op}:log` };
let checkpointing = cfg.checkpointEvery > 0 && cfg.pop === 'commit';
let sinceCkpt = 0;  // events consumed since the last checkpoint
let forceCkpt = 0;  // > 0: checkpoint at that many commits from now
let lastN = 0;
let perPop = 1;  // set in main()
let prefetch = [];  // frames handed over with the state
const IK = (i) => ({ ready: `cep:${i}:ready`, go: `cep:${i}:go`, state: `cep:${i}:state`,
  first: `cep:${i}:first_output`, prev: `cep:${i}:prev_last_output`, at: `cep:${i}:handover_at`,
  swapped: `cep:${i}:swapped` });
let prepared = null;  // {inst, env, module, path}: a version loaded in this process (step 7b)
const now = () => Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, same as Python's
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tracing = env.TIDAL_CEP_TRACE === '1';
const trace = (what) => { if (tracing) console.error(`tidal-cep ${cfg.inst} ${what} t=${now().toFixed(6)}`); };
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
  if (cfg.mode === 'blob') {  // frames of at most B events, as the host's
    const out = [];
    for (let i = 0; i < evs.length; i += cfg.batch) out.push(Buffer.from('J' + JSON.stringify(evs.slice(i, i + cfg.batch))));
    return out;
  }
  return evs.map((e) => Buffer.from('J' + JSON.stringify(e)));
}

function processFrames(frames) {
  const evs = decode(frames);
  lastN = evs.length;
  if (frames.length) {
    const perFrame = evs.length / frames.length;
    perPop = Math.max(1, Math.min(cfg.batch, Math.floor(cfg.batch / Math.max(perFrame, 1))));
  }
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
  if (checkpointing && data.length) {  // a checkpoint once K events were consumed since the last
    sinceCkpt += lastN;
    let forced = false;
    if (forceCkpt) { forceCkpt -= 1; forced = forceCkpt === 0; }
    if (forced || sinceCkpt >= cfg.checkpointEvery) {
      ops.push(['SET', K.ckpt, packState(state)], ['DEL', K.log]);
      sinceCkpt = 0;
    } else ops.push(['RPUSH', K.log, ...data]);
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

// The go signal of a hand-over: a state over 64 KB goes through a file in /dev/shm (the queue
// store moves a path, not MBs), in the Python SDK's 'T' format; a small one inline; either way
// packed by state.js ('S' + JSON, or 'V' with typed arrays as raw bytes).
// `after`: the frames behind the barrier this instance already read; the new one processes
// them without a pop round trip (they stay at the head of the in queue until it commits).
function goSignal(target, after) {
  const st = packState(state);
  const parts = [Buffer.from('T')];
  if (st.length <= 65536 || !fs.existsSync('/dev/shm')) {
    enc(['S', st, after], parts);
  } else {
    const p = `/dev/shm/tidal-cep-${target}-${process.pid}-${Date.now()}.state`;
    fs.writeFileSync(p, st, { mode: 0o600 });
    enc(['F', p, after], parts);
  }
  return Buffer.concat(parts);
}

// In-process hot update (docs/cep-protocol.md, step 7b): the manager sends `\0P` + JSON
// {instance, env, source}; this runtime loads that version's module beside the running one
// (its environment in force while its top-level code runs) and answers on
// cep:<instance>:ready: '1', or 'E' + the error (the update fails, nothing changed). The
// running version keeps serving. At the barrier `\0W<instance>` the prepared version takes
// over from the next event with the same in-memory state: nothing is serialized or parsed.
function applyEnv(next) {
  for (const k of Object.keys(process.env)) if (!(k in next)) delete process.env[k];
  for (const [k, v] of Object.entries(next)) process.env[k] = String(v);
}
function prepare(frame) {
  let inst = '';
  const before = { ...process.env };
  try {
    const msg = JSON.parse(frame.toString('utf8', 2));
    inst = String(msg.instance);
    applyEnv(msg.env);
    const p = require.resolve(path.resolve(String(msg.source)));
    delete require.cache[p];
    const mod = require(p);
    if (!mod || typeof mod.process !== 'function') throw new Error(`${p} exports no process(events, state)`);
    prepared = { inst, env: { ...msg.env }, module: mod, path: p };
    trace(`prepared ${inst}`);
    return ['RPUSH', IK(inst).ready, '1'];
  } catch (e) {
    return ['RPUSH', IK(inst).ready, `E${(e && e.message) || e}`];
  } finally {
    applyEnv(before);
  }
}
function swap() {
  const p = prepared;
  prepared = null;
  if (typeof user.close === 'function') {
    try { user.close(); } catch (e) { console.error(`tidal-cep: close() of the old version failed: ${e}`); }
  }
  if (userPath !== p.path) delete require.cache[userPath];
  applyEnv(p.env);
  cfg = readCfg();
  checkpointing = cfg.checkpointEvery > 0 && cfg.pop === 'commit';
  user = p.module;
  userPath = p.path;
  if (cfg.emptyState || user.emptyState) state = {};
  firstDone = false;
  if (checkpointing) forceCkpt = 2;  // as a process hand-over: a checkpoint of its own soon
  trace('swapped');
}

async function main() {
  const r = cfg.store.startsWith('unix://') ? new SockStore(cfg.store) : new Resp(cfg.store);
  await r.ready();
  if (!cfg.standby && checkpointing) {  // after a crash: checkpoint + replay of the log
    const [ck, log] = await r.multi([['GET', K.ckpt], ['LRANGE', K.log, '0', '-1']]);
    if (ck && (ck[0] === 0x53 || ck[0] === 0x56)) state = unpackState(ck);
    if (log && log.length) processFrames(log);
  }
  await r.call(['RPUSH', IK(cfg.inst).ready, '1']);
  if (cfg.standby) {
    for (;;) {
      const go = await r.call(['BLPOP', IK(cfg.inst).go, '1']);
      if (go === null) { if (stop) return r.close(); continue; }
      const g = go[1];
      trace('go');
      let raw = null;
      if (g[0] === 0x53 || g[0] === 0x56) raw = g;  // a packed state (state.js)
      else if (g[0] === 0x54) {  // 'T' + tagged [kind, state or path, frames]: Python's format
        const [kind, val, after] = dec(g, 1)[0];
        prefetch = (after || []).map((x) => Buffer.from(x));
        if (kind === 'F') {
          const p = String(val);
          if (!path.basename(p).startsWith('tidal-cep-') || !['/dev/shm', '/tmp'].includes(path.dirname(p))) throw new Error(`refusing state file ${p}`);
          raw = fs.readFileSync(p);
          fs.unlinkSync(p);
          trace('read state file');
        } else raw = Buffer.from(val);
      }
      if (raw !== null && raw.length && !cfg.emptyState && !user.emptyState) {
        try { state = unpackState(raw); } catch (e) { state = {}; }
      }
      trace('restored');
      if (checkpointing) forceCkpt = 2;  // own checkpoint at the 2nd commit, off the critical path
      break;
    }
  }
  let empties = 0;
  // Frames per pop, adapted so that a pop holds about B events (frames carry 1..B events):
  // the first pop takes one frame (its size is unknown until then), so after a hand-over or
  // a backlog the first result comes after one frame, not after B*B events.
  perPop = 1;
  while (!stop) {
    let frames; let tries; let iso;
    if (prefetch.length) {  // handed over with the state: no pop round trip
      frames = prefetch; prefetch = []; tries = 1; iso = null;
    } else {
      [frames, tries, iso] = await r.multi([['LRANGE', cfg.inKey, '0', String(perPop - 1)], ['INCR', K.tries], ['GET', K.isolate]]);
    }
    if (!frames.length) {
      empties++;
      await r.call(['SET', K.tries, '0']);
      await sleep(Math.min(cfg.backoffMs * empties, cfg.backoffMaxMs));
      continue;
    }
    empties = 0;
    let use = frames;
    let isolate = iso === null || iso === undefined ? 0 : Number(iso.toString());
    // first redelivery of a failed batch: go one event at a time through all of it
    if (tries > 1 && isolate === 0) isolate = frames.length;
    let left = null;
    if ((tries > 1 || isolate > 0) && frames[0][0] !== 0) {
      // redelivery after a crash: one event at a time, as the Python SDK
      const head = frames[0];
      const evs = decode([head]);
      if (evs.length > 1) {  // re-frame the head blob into single events, keeping the tries
        const singles = evs.map((e) => Buffer.from('J' + JSON.stringify(e)));
        await r.multi([['LTRIM', cfg.inKey, '1', '-1'], ['LPUSH', cfg.inKey, ...singles.reverse()],
          ['SET', K.isolate, String(isolate + evs.length - 1)], ['SET', K.tries, String(tries - 1)]]);
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
    if (tracing && !firstDone) trace(`pop ${use.length} frames`);
    const [outs, parked] = processFrames(data);
    if (tracing && !firstDone) trace(`processed ${lastN} events`);
    const firstNow = !firstDone;
    const ops = commitOps(outs, cut + (ctrl ? 1 : 0), parked, data);
    if (left !== null) ops.push(['SET', K.isolate, left]);
    let target = null;
    if (ctrl && ctrl[1] === 0x48) target = ctrl.toString('utf8', 2);
    let swapping = false;
    if (ctrl && ctrl[1] === 0x50) ops.push(prepare(ctrl));
    if (ctrl && ctrl[1] === 0x57) {
      const to = ctrl.toString('utf8', 2);
      // not prepared: a restarted instance already runs that version; the barrier is consumed
      if (prepared && prepared.inst === to) {
        const nk = IK(to);
        if (lastOut !== null) ops.push(['SET', nk.prev, String(lastOut)]);
        ops.push(['SET', nk.at, String(now())], ['RPUSH', nk.swapped, '1']);
        swapping = true;
      }
    }
    if (target && target !== cfg.inst) {
      trace(`barrier after ${lastN} events`);
      const nk = IK(target);
      if (lastOut !== null) ops.push(['SET', nk.prev, String(lastOut)]);
      const after = left === null ? use.slice(cut + 1) : [];
      ops.push(['SET', nk.at, String(now())], ['RPUSH', nk.go, goSignal(target, after)]);
    }
    if (target && target !== cfg.inst) trace('state serialized');
    await r.multi(ops);
    if (tracing && (firstNow || target)) trace('committed');
    if (target && target !== cfg.inst) break;
    if (swapping) {
      swap();
      if (left === null) prefetch = use.slice(cut + 1);  // still at the head of the in queue
    }
  }
  r.close();
}

main().catch((e) => { console.error(`tidal-cep node operator failed: ${e.stack || e}`); process.exit(1); });
