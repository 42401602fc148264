/**
 * Start turns: concurrent starts run their JavaScript part one loop iteration each, in call
 * order, so a burst of starts leaves room for timers and I/O in between.
 */
import { startTurn } from '../../lib/vm/start-turns';

describe('startTurn', () => {
  it('grants turns in call order, one per iteration of the event loop', async () => {
    const order: number[] = [];
    // An immediate chain ticking once per loop iteration: the grants must land on distinct ticks.
    let tick = 0;
    let ticking = true;
    const ticker = (): void => {
      tick++;
      if (ticking) setImmediate(ticker);
    };
    setImmediate(ticker);
    const ticksAtGrant: number[] = [];
    await Promise.all([0, 1, 2, 3, 4].map(async (i) => {
      await startTurn();
      order.push(i);
      ticksAtGrant.push(tick);
    }));
    ticking = false;
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(new Set(ticksAtGrant).size).toBe(5);
  });

  it('a lone start waits for nothing but the current turn to end', async () => {
    let granted = false;
    const p = startTurn().then(() => { granted = true; });
    await Promise.resolve();
    expect(granted).toBe(false);
    await p;
    expect(granted).toBe(true);
  });
});
