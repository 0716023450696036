'use strict';
// A faulty Node.js operator for fault tests: the process dies on an event with amount -1.
module.exports = {
  process(events) {
    if (events.some((e) => e.amount === -1)) process.exit(3);
    return events;
  },
};
