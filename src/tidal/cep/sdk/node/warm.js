'use strict';
// A pre-started Node.js operator runtime: the node manager keeps one spare process with the
// interpreter up and the SDK's modules loaded, so a new version (a hot update, a restart)
// skips the cold start. The assignment arrives as one JSON line on stdin,
// {"env": {...the operator contract...}, "source": "/path/operator.js"}; then run.js runs.
require('./resp');
require('./sockstore');
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
