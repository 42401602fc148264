/**
 * Reads a drive's virtio-mmio transport counter from `vm.metrics()`, whichever layout it has:
 * `drives[id].transport.<name>` (a nested object) or the flattened `drives[id].transport<Name>`.
 */
import type { MicroVM } from '../../lib/vm/microvm';

/** Transport counters the tests read. */
export type TransportCounter = 'configChangeInterrupts' | 'configGeneration' | 'configReads' | 'interrupts' | 'status' | 'activations';

/** The counter, or undefined when the drive or the counter is missing. */
export function transportCounter(vm: MicroVM, drive: string, name: TransportCounter): number | undefined {
  const d = vm.metrics().drives[drive] as unknown as Record<string, unknown> | undefined;
  if (!d) return undefined;
  const nested = d.transport;
  if (nested !== null && typeof nested === 'object') {
    const v = (nested as Record<string, unknown>)[name];
    if (typeof v === 'number') return v;
  }
  const flat = d[`transport${name[0].toUpperCase()}${name.slice(1)}`];
  return typeof flat === 'number' ? flat : undefined;
}

/** All of {@link TransportCounter} for one drive, for failure messages. */
export function transportSnapshot(vm: MicroVM, drive: string): Record<TransportCounter, number | undefined> {
  const names: TransportCounter[] = ['status', 'configGeneration', 'configChangeInterrupts', 'interrupts', 'configReads', 'activations'];
  return Object.fromEntries(names.map((n) => [n, transportCounter(vm, drive, n)])) as Record<TransportCounter, number | undefined>;
}
