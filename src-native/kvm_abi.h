// KVM structures whose C++ view of <linux/kvm.h> is wrong, with their ioctl numbers.
//
// Linux 6.x uapi headers declare flexible array members with __DECLARE_FLEX_ARRAY, which in C++
// wraps the array in a struct with an empty member: C++ gives that member a byte, so
// sizeof(kvm_cpuid2) becomes 12 instead of 8 (kvm_msrs 16 instead of 8), the entries move, and
// the ioctl numbers (which encode the size) change: KVM then answers EINVAL or reads garbage.
// We use the C layout, spelled out here, for every structure with a flexible array that we pass.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kindling {

// struct kvm_cpuid2 as C lays it out: the entries follow the 8-byte header.
struct KvmCpuid2Header {
  uint32_t nent;
  uint32_t padding;
};
// struct kvm_msrs as C lays it out.
struct KvmMsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};

static_assert(sizeof(KvmCpuid2Header) == 8, "kvm_cpuid2 header is 8 bytes in C");
static_assert(sizeof(KvmMsrsHeader) == 8, "kvm_msrs header is 8 bytes in C");
static_assert(sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 layout");
static_assert(sizeof(kvm_msr_entry) == 16, "kvm_msr_entry layout");

constexpr unsigned long kKvmGetSupportedCpuid = _IOWR(KVMIO, 0x05, KvmCpuid2Header);
constexpr unsigned long kKvmSetCpuid2 = _IOW(KVMIO, 0x90, KvmCpuid2Header);
constexpr unsigned long kKvmGetMsrs = _IOWR(KVMIO, 0x88, KvmMsrsHeader);
constexpr unsigned long kKvmSetMsrs = _IOW(KVMIO, 0x89, KvmMsrsHeader);

// The values C computes (c008ae05, 4008ae90, c008ae88, 4008ae89): guards against a future
// header change as much as against this bug.
static_assert(kKvmGetSupportedCpuid == 0xc008ae05UL, "KVM_GET_SUPPORTED_CPUID");
static_assert(kKvmSetCpuid2 == 0x4008ae90UL, "KVM_SET_CPUID2");
static_assert(kKvmGetMsrs == 0xc008ae88UL, "KVM_GET_MSRS");
static_assert(kKvmSetMsrs == 0x4008ae89UL, "KVM_SET_MSRS");

// struct kvm_msr_list as C lays it out: the indices follow the 4-byte count.
struct KvmMsrListHeader {
  uint32_t nmsrs;
};
static_assert(sizeof(KvmMsrListHeader) == 4, "kvm_msr_list header is 4 bytes in C");

// struct kvm_xsave is 4096 bytes in C (the `extra` flexible array adds nothing); KVM_GET_XSAVE2 and
// KVM_SET_XSAVE move KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes, at least 4096.
constexpr size_t kKvmXsaveSize = 4096;
struct KvmXsaveC {
  uint32_t region[1024];
};
static_assert(sizeof(KvmXsaveC) == kKvmXsaveSize, "kvm_xsave is 4096 bytes in C");

constexpr unsigned long kKvmGetMsrIndexList = _IOWR(KVMIO, 0x02, KvmMsrListHeader);
constexpr unsigned long kKvmGetCpuid2 = _IOWR(KVMIO, 0x91, KvmCpuid2Header);
constexpr unsigned long kKvmGetXsave = _IOR(KVMIO, 0xa4, KvmXsaveC);
constexpr unsigned long kKvmSetXsave = _IOW(KVMIO, 0xa5, KvmXsaveC);
constexpr unsigned long kKvmGetXsave2 = _IOR(KVMIO, 0xcf, KvmXsaveC);
static_assert(kKvmGetMsrIndexList == 0xc004ae02UL, "KVM_GET_MSR_INDEX_LIST");
static_assert(kKvmGetCpuid2 == 0xc008ae91UL, "KVM_GET_CPUID2");
static_assert(kKvmGetXsave == 0x9000aea4UL, "KVM_GET_XSAVE");
static_assert(kKvmSetXsave == 0x5000aea5UL, "KVM_SET_XSAVE");
static_assert(kKvmGetXsave2 == 0x9000aecfUL, "KVM_GET_XSAVE2");

// A header followed by `n` entries, 8-byte aligned, zeroed.
template <typename Header, typename Entry>
struct FlexTable {
  explicit FlexTable(size_t n) : storage((sizeof(Header) + n * sizeof(Entry) + 7) / 8, 0) {}
  Header* header() { return reinterpret_cast<Header*>(storage.data()); }
  Entry* entries() { return reinterpret_cast<Entry*>(reinterpret_cast<char*>(storage.data()) + sizeof(Header)); }
  void* data() { return storage.data(); }
  std::vector<uint64_t> storage;
};

}  // namespace kindling
