/**
 * Errors of `vm.invoke()`.
 * @module
 */
import { KindlingError } from '../errors';

/**
 * Why an invocation failed:
 * - `CONNECT_FAILED`: no agent answered on the port (the guest refused the connection, or the
 *   device is not there).
 * - `TIMEOUT`: no response within `timeoutMs` (the connection is dropped: a late answer is not
 *   taken for the next request).
 * - `AGENT_CLOSED`: the connection ended or was reset before the response (the agent crashed or
 *   exited).
 * - `AGENT_ERROR`: the agent answered with an error frame (its handler failed); `message` holds
 *   the agent's text.
 * - `OVERSIZE`: the request, or the response the agent announced, is larger than the limit.
 * - `PROTOCOL`: the agent sent something that is not a valid response frame for this request.
 * - `BAD_PAYLOAD`: the payload cannot be encoded (not JSON-serializable).
 * - `BAD_RESPONSE`: a JSON response that does not parse.
 * - `CLOSED`: the client was closed.
 */
export type InvokeErrorCode =
  | 'CONNECT_FAILED'
  | 'TIMEOUT'
  | 'AGENT_CLOSED'
  | 'AGENT_ERROR'
  | 'OVERSIZE'
  | 'PROTOCOL'
  | 'BAD_PAYLOAD'
  | 'BAD_RESPONSE'
  | 'CLOSED';

/** A failed invocation; see {@link InvokeErrorCode}. */
export class InvokeError extends KindlingError {
  /** Discriminant for programmatic handling. */
  readonly code: InvokeErrorCode;

  /**
   * @param code why
   * @param message details
   * @param options `cause`: the underlying error
   */
  constructor(code: InvokeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InvokeError';
    this.code = code;
  }
}
