import type { IrqLine } from '../../../lib/bus';

/**
 * An interrupt line for devices that must drive it by level only (the UART, the i8042):
 * records every level change and refuses edge use.
 */
export class LevelIrq implements IrqLine {
  level = false;
  history: boolean[] = [];
  constructor(private readonly device: string) {}
  setLevel(level: boolean): void {
    this.level = level;
    this.history.push(level);
  }
  trigger(): void {
    throw new Error(`the ${this.device} drives its line with setLevel only`);
  }
  /** How many times the line was raised. */
  get rises(): number {
    return this.history.filter((l) => l).length;
  }
}
