/**
 * virtio-net: the device model, its TAP and link backends, the host interface it needs, option
 * validation, and the metadata service.
 * @module
 */
export * from './constants';
export { NetError } from './errors';
export type { NetErrorCode } from './errors';
export { NetDevice, NET_STATE_VERSION, DEFAULT_RX_QUEUE_FRAMES, DEFAULT_RX_QUEUE_BYTES } from './device';
export type { NetDeviceConfig, NetMetrics } from './device';
export { TapBackend, LinkBackend } from './backend';
export type { NetBackend, LinkEvents } from './backend';
export type { NetHost, TapInfo, FdPoll, SpanList } from './host';
export {
  checkNicOptions,
  checkNicUpdate,
  checkMmdsOptions,
  parseMac,
  formatMac,
  parseIpv4,
  DEFAULT_MMDS_IPV4,
  DEFAULT_MMDS_SIZE_LIMIT,
  MAX_MMDS_SIZE_LIMIT,
} from './config';
export type { NicOptions, NicConfig, NicBackendConfig, NicUpdateOptions, MmdsOptions, MmdsConfig, FrameSwitch } from './config';
export { createNetDevice } from './factory';
export type { NetDeviceOptions } from './factory';
export { decodeVnetHeader, encodeVnetHeader, checkTxHeader, tunOffloadsFor, tapOffloadFeatures, guestTakesGso, rxFlagsMask } from './vnet-header';
export type { VnetHeader, TxHeaderProblem } from './vnet-header';
export * from './mmds';
