// Event-loop stalls, and what they were made of. perf_hooks.monitorEventLoopDelay gives the delay;
// a 1 ms interval timer here also reads the JavaScript thread's scheduler statistics
// (/proc/thread-self/sched: CPU time, voluntary and involuntary context switches) at each tick,
// so that the longest gaps between ticks can be split into time the thread ran (work done on
// the JavaScript thread: ours to remove) and time it did not (waiting for a CPU behind other
// threads and processes, or blocked in a system call). On a shared, overloaded host the second
// part is the host's doing; the first is the one the design controls.
'use strict';
const fs = require('fs');
const { monitorEventLoopDelay } = require('perf_hooks');

function readSched() {
  try {
    const s = fs.readFileSync('/proc/thread-self/sched', 'utf8');
    const num = (k) => Number((new RegExp(`^${k.replace('.', '\\.')}\\s*:\\s*([0-9.]+)`, 'm').exec(s) || [])[1] || 0);
    return { cpuMs: num('se.sum_exec_runtime'), vol: num('nr_voluntary_switches'), invol: num('nr_involuntary_switches') };
  } catch {
    return undefined;
  }
}

/** Starts monitoring; stop() returns the summary. */
function start() {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const gaps = [];
  let last = process.hrtime.bigint();
  let lastSched = readSched();
  const timer = setInterval(() => {
    const now = process.hrtime.bigint();
    const sched = readSched();
    const gapMs = Number(now - last) / 1e6;
    if (gapMs > 2 && sched && lastSched) {
      gaps.push({
        gapMs,
        cpuMs: sched.cpuMs - lastSched.cpuMs,
        voluntary: sched.vol - lastSched.vol,
        involuntary: sched.invol - lastSched.invol,
      });
    }
    last = now;
    lastSched = sched;
  }, 1);
  return {
    stop() {
      clearInterval(timer);
      h.disable();
      gaps.sort((a, b) => b.gapMs - a.gapMs);
      const maxCpu = gaps.reduce((m, g) => Math.max(m, g.cpuMs), 0);
      return {
        maxDelayMs: h.max / 1e6,
        p99DelayMs: h.percentile(99) / 1e6,
        longest: gaps[0],
        // The longest run of JavaScript-thread work without a break (its CPU time within a gap).
        maxCpuMsInOneGap: maxCpu,
        gapsOver2Ms: gaps.length,
      };
    },
  };
}

module.exports = { start };
