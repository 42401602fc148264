/**
 * A guest-side invoke agent for unit tests and benchmarks, speaking the invoke protocol
 * (`docs/invoke-protocol.md`) over a {@link MockVsockGuest}: accepts connections on its port,
 * decodes request frames, answers each with the handler's frame, returns credit as it consumes,
 * follows shutdowns. Call {@link MockGuestAgent.pump} whenever the device may have sent something
 * (or let it run on the guest's interrupts with {@link MockGuestAgent.attach}).
 */
import {
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_MASK,
} from '../devices/vsock/constants';
import { u32Diff } from '../devices/vsock/connection';
import { FrameDecoder, encodeFrame, type Frame } from '../invoke/framing';
import type { MockVsockGuest, ReceivedPacket } from './mock-vsock';

/**
 * What the agent does with a request: answer with a frame (`{ kind, payload }`), `'crash'` (reset
 * the connection instead of answering), `'silent'` (never answer) or `'garbage'` (send bytes that
 * are no frame).
 */
export type AgentReply =
  | {
      /** Frame kind of the answer. */
      kind: number;
      /** Its payload. */
      payload: Uint8Array;
    }
  | 'crash'
  | 'silent'
  | 'garbage';

/** Echo: JSON and bytes requests come back as the matching response kind. */
export function echoHandler(f: Frame): AgentReply {
  return { kind: f.kind | 0x80, payload: f.payload };
}

interface AgentConn {
  hostPort: number;
  guestPort: number;
  decoder: FrameDecoder;
  received: number;
  advertised: number;
  sent: number;
  hostBufAlloc: number;
  hostFwdCnt: number;
  out: Buffer[];
}

const AGENT_BUF_ALLOC = 256 * 1024;
const MAX_RW = 4096;

/** See the module comment. */
export class MockGuestAgent {
  /** Requests answered. */
  answered = 0;
  private readonly conns = new Map<string, AgentConn>();
  private pumping = false;
  private again = false;

  /**
   * @param guest the mock driver
   * @param port the agent's vsock port
   * @param handler what to answer (default {@link echoHandler})
   */
  constructor(
    readonly guest: MockVsockGuest,
    readonly port = 1024,
    public handler: (f: Frame) => AgentReply = echoHandler,
  ) {}

  /** Runs {@link pump} from the guest's interrupts (in a microtask, as an interrupt handler would run later). */
  attach(): this {
    this.guest.onInterrupt = () => queueMicrotask(() => this.pump());
    return this;
  }

  /** Handles every packet the device delivered so far. */
  pump(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.again = false;
        for (const p of this.guest.receive()) this.onPacket(p);
      } while (this.again);
    } finally {
      this.pumping = false;
    }
  }

  private reply(c: { hostPort: number; guestPort: number }, op: number, extra: { flags?: number; received?: number } = {}, payload?: Uint8Array): void {
    this.guest.send({ op, srcPort: c.guestPort, dstPort: c.hostPort, bufAlloc: AGENT_BUF_ALLOC, fwdCnt: (extra.received ?? 0) >>> 0, flags: extra.flags ?? 0 }, payload);
  }

  private onPacket(p: ReceivedPacket): void {
    const h = p.hdr;
    const key = `${h.srcPort}:${h.dstPort}`;
    const c = this.conns.get(key);
    if (h.op === VIRTIO_VSOCK_OP_REQUEST) {
      if (h.dstPort !== this.port || c !== undefined) {
        this.reply({ hostPort: h.srcPort, guestPort: h.dstPort }, VIRTIO_VSOCK_OP_RST);
        return;
      }
      const conn: AgentConn = {
        hostPort: h.srcPort, guestPort: h.dstPort, decoder: new FrameDecoder(), received: 0, advertised: 0, sent: 0,
        hostBufAlloc: h.bufAlloc, hostFwdCnt: h.fwdCnt, out: [],
      };
      this.conns.set(key, conn);
      this.reply(conn, VIRTIO_VSOCK_OP_RESPONSE);
      return;
    }
    if (c === undefined) return;
    c.hostBufAlloc = h.bufAlloc;
    c.hostFwdCnt = h.fwdCnt;
    switch (h.op) {
      case VIRTIO_VSOCK_OP_RW: {
        c.received += p.payload.length;
        let frames: Frame[];
        try {
          frames = c.decoder.push(p.payload);
        } catch {
          this.drop(key, c);
          return;
        }
        for (const f of frames) {
          const r = this.handler(f);
          if (r === 'silent') continue;
          if (r === 'crash') {
            this.drop(key, c);
            return;
          }
          c.out.push(r === 'garbage' ? Buffer.from('this is not a frame') : encodeFrame(r.kind, f.id, r.payload));
          this.answered++;
        }
        break;
      }
      case VIRTIO_VSOCK_OP_SHUTDOWN:
        if ((h.flags & VIRTIO_VSOCK_SHUTDOWN_MASK) !== 0) {
          // As a Linux agent does on end of stream: finish, close (both halves), wait for RST.
          this.flush(c);
          this.reply(c, VIRTIO_VSOCK_OP_SHUTDOWN, { flags: VIRTIO_VSOCK_SHUTDOWN_MASK, received: c.received });
        }
        return;
      case VIRTIO_VSOCK_OP_RST:
        this.conns.delete(key);
        return;
      case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
        this.reply(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE, { received: c.received });
        c.advertised = c.received;
        break;
    }
    this.flush(c);
    if (c.received - c.advertised >= AGENT_BUF_ALLOC / 2) {
      this.reply(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE, { received: c.received });
      c.advertised = c.received;
    }
  }

  private drop(key: string, c: AgentConn): void {
    this.conns.delete(key);
    this.reply(c, VIRTIO_VSOCK_OP_RST);
  }

  /** Sends queued answer bytes within the host's credit. */
  private flush(c: AgentConn): void {
    while (c.out.length > 0) {
      const credit = c.hostBufAlloc - u32Diff(c.sent >>> 0, c.hostFwdCnt);
      if (credit <= 0) return;
      const head = c.out[0];
      const n = Math.min(head.length, credit, MAX_RW);
      const chunk = head.subarray(0, n);
      if (!this.guest.send({ op: VIRTIO_VSOCK_OP_RW, srcPort: c.guestPort, dstPort: c.hostPort, bufAlloc: AGENT_BUF_ALLOC, fwdCnt: c.received >>> 0 }, chunk)) return;
      c.advertised = c.received;
      c.sent += n;
      if (n === head.length) c.out.shift();
      else c.out[0] = head.subarray(n);
    }
  }
}
