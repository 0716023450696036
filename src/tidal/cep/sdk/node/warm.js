'use strict';
// A pre-started Node.js operator runtime: the node manager keeps one spare process with the
// interpreter up and the SDK's modules loaded, so a new version (a hot update, a restart)
// skips the cold start. The assignment arrives as one JSON line on stdin,
// {"env": {...the operator contract...}, "source": "/path/operator.js"}; then run.js runs.
require('./resp');
const { enc, dec } = require('./sockstore');
const { packState, unpackState } = require('./state');

// Warm the hand-over's critical path before an assignment: JSON.parse/stringify of a state of
// about 1 MB (arrays of numbers, an object of keys) compile their fast paths and grow the heap
// once here, not while the new version restores its predecessor's state; the store codec too.
(function warmUp() {
  const st = { a: new Array(65536).fill(0).map((_, i) => 1000000 + i), o: {} };
  for (let i = 0; i < 8192; i++) st.o[`k${i}`] = { n: i, s: 'x' };
  for (let rep = 0; rep < 2; rep++) JSON.parse(JSON.stringify(st));
  unpackState(packState({ t: new Float64Array(65536), n: 1 }));
  const parts = [];
  enc(['x', [['lrange', 'k', 0, 9], ['rpush', 'k', [Buffer.from('J[{"a":1}]')]]]], parts);
  dec(Buffer.concat(parts), 0);
})();
let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  buf += d;
  const k = buf.indexOf('\n');
  if (k < 0) return;
  process.stdin.removeAllListeners('data');
  process.stdin.destroy();
  const msg = JSON.parse(buf.slice(0, k));
  for (const [key, v] of Object.entries(msg.env)) process.env[key] = String(v);
  process.argv[2] = msg.source;
  require('./run.js');
});
process.stdin.on('end', () => process.exit(0));  // the manager closed: no assignment
