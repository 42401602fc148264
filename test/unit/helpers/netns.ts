import { execFile, execFileSync, spawnSync } from 'child_process';
import { existsSync } from 'fs';

/**
 * A network namespace with one TAP inside, for tests and benchmarks that exchange frames with the
 * kernel. The TAP is created in the caller's namespace (so the device can attach to it by name),
 * then {@link NetnsTap.moveIn} moves it into the namespace and gives it its address there: the
 * address exists only inside the namespace, and deleting the namespace deletes the TAP.
 */
export class NetnsTap {
  readonly ns: string;
  readonly tap: string;
  private moved = false;

  /** Why these tests cannot run here, or null. */
  static unavailable(): string | null {
    if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not root (creating network namespaces and TAPs needs CAP_NET_ADMIN)';
    const ip = spawnSync('ip', ['-V'], { encoding: 'utf8' });
    if (ip.error || ip.status !== 0) return '`ip` (iproute2) is missing';
    if (!existsSync('/dev/net/tun')) return 'no /dev/net/tun (the tun module is not loaded)';
    return null;
  }

  /** @param tag short, unique among concurrent users (keeps the 15-byte interface name limit) */
  constructor(tag: string) {
    const id = `${process.pid % 100000}${tag}`;
    this.ns = `kt-net-${id}`;
    this.tap = `kt${id}`.slice(0, 15);
    this.cleanup();
    ip('netns', 'add', this.ns);
    ip('tuntap', 'add', 'dev', this.tap, 'mode', 'tap');
  }

  /** Moves the TAP into the namespace, with `cidr` (e.g. 10.213.0.1/24), MTU and link up. */
  moveIn(cidr: string, mtu = 1500): void {
    ip('link', 'set', this.tap, 'netns', this.ns);
    this.moved = true;
    ip('-n', this.ns, 'link', 'set', 'lo', 'up');
    ip('-n', this.ns, 'link', 'set', this.tap, 'mtu', String(mtu));
    ip('-n', this.ns, 'addr', 'add', cidr, 'dev', this.tap);
    ip('-n', this.ns, 'link', 'set', this.tap, 'up');
    // Quieter link: no IPv6 autoconfiguration chatter (best effort).
    spawnSync('ip', ['netns', 'exec', this.ns, 'sysctl', '-qw', `net.ipv6.conf.${this.tap}.disable_ipv6=1`]);
  }

  /** The TAP's MAC address as the kernel sees it. */
  mac(): Uint8Array {
    const out = execFileSync('ip', [...(this.moved ? ['-n', this.ns] : []), '-j', 'link', 'show', this.tap], { encoding: 'utf8' });
    const addr = (JSON.parse(out) as { address: string }[])[0].address;
    return Uint8Array.from(addr.split(':').map((h) => parseInt(h, 16)));
  }

  /** A counter from the TAP's statistics (rx_packets: frames the kernel received from us). */
  stat(name: 'rx_packets' | 'tx_packets' | 'rx_dropped' | 'tx_dropped'): number {
    const out = execFileSync('ip', ['netns', 'exec', this.ns, 'cat', `/sys/class/net/${this.tap}/statistics/${name}`], { encoding: 'utf8' });
    return Number(out.trim());
  }

  /**
   * Runs a command inside the namespace; resolves with its stdout, rejects (with its output) when
   * it fails. Asynchronous on purpose: the devices run on this process's event loop, so a
   * synchronous child (execFileSync) would freeze the NIC for as long as the command runs, and a
   * ping from the namespace would get no answer until it had given up.
   */
  exec(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile('ip', ['netns', 'exec', this.ns, cmd, ...args], { encoding: 'utf8', timeout: timeoutMs }, (err, stdout, stderr) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} in ${this.ns} failed (${err.message.split('\n')[0]}):\n${stdout}${stderr}`));
        else resolve(stdout);
      });
    });
  }

  /** Deletes the namespace (and with it the TAP) and a TAP left in our namespace. */
  cleanup(): void {
    spawnSync('ip', ['netns', 'del', this.ns]);
    spawnSync('ip', ['link', 'del', this.tap]);
  }
}

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${r.stderr || r.error}`);
}
