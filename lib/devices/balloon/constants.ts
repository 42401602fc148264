/**
 * virtio-balloon constants (virtio 1.2 §5.5): feature bits, config layout, page size and the
 * statistics tags.
 * @module
 */

/** Feature bit: the host must be told before pages are used again (not offered: deflate needs no host action). */
export const VIRTIO_BALLOON_F_MUST_TELL_HOST = 0;
/** Feature bit: a statistics queue. */
export const VIRTIO_BALLOON_F_STATS_VQ = 1;
/** Feature bit: the guest deflates the balloon when it runs out of memory. */
export const VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2;
/** Feature bit: free page hinting. Not offered. */
export const VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3;
/** Feature bit: page poisoning. Not offered. */
export const VIRTIO_BALLOON_F_PAGE_POISON = 4;
/** Feature bit: free page reporting (a reporting queue). */
export const VIRTIO_BALLOON_F_PAGE_REPORTING = 5;

/** Config offset of `le32 num_pages`: the target, in 4 KiB pages (device writes). */
export const BALLOON_CONFIG_NUM_PAGES = 0;
/** Config offset of `le32 actual`: pages in the balloon now (driver writes). */
export const BALLOON_CONFIG_ACTUAL = 4;
/** Bytes of config space the device implements (num_pages and actual). */
export const BALLOON_CONFIG_SIZE = 8;

/** Balloon page frame numbers are in 4 KiB units (VIRTIO_BALLOON_PFN_SHIFT), whatever the guest's page size. */
export const BALLOON_PFN_SHIFT = 12;
/** 4096. */
export const BALLOON_PAGE_SIZE = 1 << BALLOON_PFN_SHIFT;
/** Pages per MiB. */
export const BALLOON_PAGES_PER_MIB = (1024 * 1024) / BALLOON_PAGE_SIZE;
/** Size of one PFN entry in the inflate/deflate queues (le32). */
export const BALLOON_PFN_SIZE = 4;
/** Size of `struct virtio_balloon_stat` (le16 tag, le64 val, packed). */
export const BALLOON_STAT_SIZE = 10;
/** Queue size. */
export const BALLOON_QUEUE_SIZE = 256;

/** Queue index of the inflate queue. */
export const BALLOON_INFLATE_QUEUE = 0;
/** Queue index of the deflate queue. */
export const BALLOON_DEFLATE_QUEUE = 1;

/**
 * Statistics tags (§5.5.6.3) and Firecracker's names for them, camel-cased (`swap_in` is
 * `swapIn`...). Tags beyond these (newer Linux reports OOM kills and reclaim counters) are
 * accepted and ignored.
 */
export const BALLOON_STAT_TAGS = {
  /** VIRTIO_BALLOON_S_SWAP_IN: memory swapped in, bytes. */
  swapIn: 0,
  /** VIRTIO_BALLOON_S_SWAP_OUT: memory swapped out, bytes. */
  swapOut: 1,
  /** VIRTIO_BALLOON_S_MAJFLT: major page faults. */
  majorFaults: 2,
  /** VIRTIO_BALLOON_S_MINFLT: minor page faults. */
  minorFaults: 3,
  /** VIRTIO_BALLOON_S_MEMFREE: unused memory, bytes. */
  freeMemory: 4,
  /** VIRTIO_BALLOON_S_MEMTOT: total memory, bytes. */
  totalMemory: 5,
  /** VIRTIO_BALLOON_S_AVAIL: available memory (Linux MemAvailable), bytes. */
  availableMemory: 6,
  /** VIRTIO_BALLOON_S_CACHES: disk caches, bytes. */
  diskCaches: 7,
  /** VIRTIO_BALLOON_S_HTLB_PGALLOC: hugetlb page allocations. */
  hugetlbAllocations: 8,
  /** VIRTIO_BALLOON_S_HTLB_PGFAIL: hugetlb allocation failures. */
  hugetlbFailures: 9,
} as const;

/** A guest statistic's name. */
export type BalloonStatName = keyof typeof BALLOON_STAT_TAGS;
