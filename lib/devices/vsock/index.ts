/**
 * virtio-vsock: the device model, its connections and host-side sockets, the Firecracker-compatible
 * Unix socket interface, options and constants.
 * @module
 */
export * from './constants';
export { VsockError } from './errors';
export type { VsockErrorCode } from './errors';
export { checkVsockOptions, VSOCK_DEFAULT_BUFFER_SIZE, VSOCK_DEFAULT_MAX_CONNECTIONS, VSOCK_MAX_UDS_PATH_BYTES } from './config';
export type { VsockOptions, VsockConfig } from './config';
export { decodeHeader, encodeHeader, checkGuestHeader } from './packet';
export type { VsockHeader, HeaderVerdict } from './packet';
export { VsockConnection, connectionKey, u32Diff } from './connection';
export type { ConnectionState, ConnectionOrigin, ConnectionSink, ConnectionOwner, OutgoingPacket, DataVerdict } from './connection';
export { VsockSocket, VSOCK_SOCKET_HIGH_WATER_MARK } from './socket';
export { UdsMuxer, parseConnectLine, splice, MUXER_MAX_LINE } from './muxer';
export type { MuxerTarget, MuxerCounters } from './muxer';
export type { VsockHost, UnixServerHandle } from './host';
export { VsockDevice, createVsockDevice, VSOCK_STATE_VERSION, VSOCK_MAX_ORPHAN_RSTS, VSOCK_DEFAULT_CONNECT_TIMEOUT_MS } from './device';
export type { VsockMetrics, VsockConnectOptions, VsockConnectionHandler, VsockListener, VsockDeviceConfig } from './device';
