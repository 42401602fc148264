/**
 * `vm.invoke()`: the framing of the invoke protocol (`docs/invoke-protocol.md`) and a client that
 * runs requests over vsock connections to a guest agent, reusing them between invocations.
 * @module
 */
export { InvokeError } from './errors';
export type { InvokeErrorCode } from './errors';
export {
  FrameDecoder,
  encodeFrame,
  encodeFrameHeader,
  isFrameKind,
  FRAME_KIND,
  FRAME_HEADER_SIZE,
  FRAME_MAGIC_0,
  FRAME_MAGIC_1,
  FRAME_VERSION,
  DEFAULT_MAX_PAYLOAD,
  MAX_PAYLOAD_LIMIT,
} from './framing';
export type { Frame } from './framing';
export {
  InvokeClient,
  Invoker,
  encodeRequest,
  decodeResponse,
  DEFAULT_INVOKE_PORT,
  DEFAULT_INVOKE_TIMEOUT_MS,
  DEFAULT_INVOKE_POOL_SIZE,
} from './client';
export type { InvokePayload, InvokeResult, InvokeOptions, InvokeClientOptions, InvokeMetrics, EncodedRequest } from './client';
