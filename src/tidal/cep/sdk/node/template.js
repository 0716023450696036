'use strict';
// Template of a Tidal CEP operator in Node.js. Register it with
//   {"language": "node", "source": "<this file's text>"}
// `process` gets up to B events (objects) and the keyed state (a plain object, carried
// across hot updates as JSON); it returns the output events.
module.exports = {
  required: ['card', 'amount'],
  process(events, state) {
    return events.map((e) => {
      const k = String(e.card);
      state[k] = (state[k] || 0) + 1;           // keyed state: events seen per card
      return { ...e, flag: e.amount > 1000 ? 1 : 0, seen: state[k] };
    });
  },
};
