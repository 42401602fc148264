/** Reads a drive's virtio-mmio transport counters from `vm.metrics()` (`drives[id].transport`). */
import type { MicroVM } from '../../lib/vm/microvm';

/** Transport counters the tests read. */
export type TransportCounter = 'configChangeInterrupts' | 'configGeneration' | 'configReads' | 'interrupts' | 'status' | 'activations';

/** The counter, or undefined when the drive is missing. */
export async function transportCounter(vm: MicroVM, drive: string, name: TransportCounter): Promise<number | undefined> {
  return (await vm.metrics()).drives[drive]?.transport[name];
}

/** All of {@link TransportCounter} for one drive, for failure messages. */
export async function transportSnapshot(vm: MicroVM, drive: string): Promise<Record<TransportCounter, number | undefined>> {
  const t = (await vm.metrics()).drives[drive]?.transport;
  const names: TransportCounter[] = ['status', 'configGeneration', 'configChangeInterrupts', 'interrupts', 'configReads', 'activations'];
  return Object.fromEntries(names.map((n) => [n, t?.[n]])) as Record<TransportCounter, number | undefined>;
}
