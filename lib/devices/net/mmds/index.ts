/**
 * Firecracker's microVM metadata service: the store, and the per-NIC endpoint that answers ARP
 * and HTTP over its own TCP responder.
 * @module
 */
export { MmdsStore, MmdsError, mergePatch, MIN_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS, MMDS_STATE_VERSION } from './store';
export type { MmdsErrorCode, MmdsStoreMetrics, MmdsStoreOptions, JsonValue, MmdsLookup } from './store';
export { MmdsStack, MMDS_MAC, MMDS_TCP_PORT, MMDS_MAX_CONNECTIONS, MMDS_RECV_BUFFER, MMDS_PEEK_BYTES } from './service';
export type { MmdsStackMetrics, MmdsStackOptions } from './service';
export { parseHttpRequest, formatResponse, formatImds, answerMmds, mmdsStreamHandler, DEFAULT_HTTP_LIMITS, TOKEN_PATH } from './http';
export type { HttpLimits, HttpRequest, HttpParse, HttpResponse, MmdsHttpCounters, StreamStep } from './http';
export { TcpResponder } from './tcp';
export type { TcpResponderOptions, TcpMetrics, InboundSegment, OutboundSegment } from './tcp';
