/**
 * Turns of the event loop for starting VMs.
 *
 * The synchronous part of a start (reading the kernel's headers, planning its loading, building
 * the boot structures, describing the set-up for the addon) costs a few hundred microseconds of
 * the JavaScript thread; the heavy part runs on the thread pool. A program that starts 50 VMs at
 * once (`Promise.all(vms.map((vm) => vm.start()))`) would otherwise run 50 of those parts in one
 * turn of the event loop, with no timer or I/O callback in between (about 25 ms measured). Each
 * start waits for a turn of its own instead: one per iteration of the loop, in call order.
 * @module
 */

const waiting: (() => void)[] = [];
let pumping = false;

/**
 * Resolves when this start may run its synchronous part: in the check phase of the current loop
 * iteration if no other start waits, else one iteration later per start ahead of it.
 */
export function startTurn(): Promise<void> {
  return new Promise((resolve) => {
    waiting.push(resolve);
    if (!pumping) {
      pumping = true;
      setImmediate(pump);
    }
  });
}

function pump(): void {
  const next = waiting.shift();
  // An immediate queued from an immediate runs in the next iteration, after its timers and I/O.
  if (waiting.length > 0) setImmediate(pump);
  else pumping = false;
  next?.();
}
