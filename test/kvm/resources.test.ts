/**
 * 200 start/stop cycles in one process: open fds and RSS must stay flat, i.e. every cycle
 * releases its vCPU threads, memory mapping, eventfds and KVM fds.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MicroVM } from '../../lib/vm/microvm';
import { describeKvm, guest } from './harness';

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

describeKvm('resource release', () => {
  it('keeps fds and RSS flat over 200 VM lifecycles', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kindling-res-'));
    const disk = path.join(tmp, 'disk.img');
    fs.writeFileSync(disk, Buffer.alloc(1 << 20));
    const cycle = async (i: number) => {
      // Alternate a guest that ends itself with one the host stops, both with a drive attached.
      const vm = new MicroVM().memory(32).kernel(guest(i % 2 ? 'hello' : 'echo')).drive('d0', { path: disk });
      await vm.start();
      if (i % 2 === 0) await vm.stop();
      const info = await vm.wait();
      expect(info.reason).toBe(i % 2 ? 'reset' : 'stopped');
    };
    for (let i = 0; i < 20; i++) await cycle(i);
    global.gc?.();
    const fds0 = openFds();
    const rss0 = process.memoryUsage().rss;
    for (let i = 20; i < 200; i++) await cycle(i);
    global.gc?.();
    const fds1 = openFds();
    const rss1 = process.memoryUsage().rss;
    fs.rmSync(tmp, { recursive: true, force: true });
    console.log(`after 20 cycles: ${fds0} fds, RSS ${(rss0 / 1048576).toFixed(1)} MiB; after 200: ${fds1} fds, RSS ${(rss1 / 1048576).toFixed(1)} MiB`);
    expect(fds1).toBe(fds0);
    // 180 leaked 32 MiB guests touched even slightly would be far above this bound.
    expect(rss1 - rss0).toBeLessThan(48 * 1024 * 1024);
  });
});
