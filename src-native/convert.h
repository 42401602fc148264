// Conversions between JavaScript values and KVM structures. Field names follow
// lib/native/types.ts exactly; 64-bit fields are bigint (a number is accepted on input).
#pragma once

#include <linux/kvm.h>
#include <napi.h>

#include <cstdint>
#include <vector>

namespace kindling {

/** Argument `i` as a u32 (a non-negative integer number < 2^32); TypeError/RangeError otherwise. */
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* what);
/** Argument `i` as a non-negative safe integer (used for addresses and sizes). */
uint64_t ArgSafeU64(const Napi::CallbackInfo& info, size_t i, const char* what);
/** Argument `i` as an int32 file descriptor (>= 0). */
int ArgFd(const Napi::CallbackInfo& info, size_t i);
/** A bigint or a safe-integer number as u64 (two's complement for negative values). */
uint64_t ValueToU64(Napi::Env env, Napi::Value v, const char* what);

/** The bytes of a Buffer/TypedArray argument (borrowed: valid while the value is alive). */
struct ByteView {
  const uint8_t* data = nullptr;
  size_t size = 0;
};
/** `v` as bytes; TypeError naming `what` unless it is a Buffer or another TypedArray. */
ByteView BytesOf(Napi::Env env, Napi::Value v, const char* what);
/** A copy of `n` bytes as a Node Buffer. */
Napi::Buffer<uint8_t> CopyToBuffer(Napi::Env env, const void* data, size_t n);

Napi::Object RegsToJs(Napi::Env env, const kvm_regs& r);
void RegsFromJs(Napi::Env env, Napi::Value v, kvm_regs* r);

/** Fills every Sregs field; `s->interrupt_bitmap` is left as the caller provided it. */
Napi::Object SregsToJs(Napi::Env env, const kvm_sregs& s);
void SregsFromJs(Napi::Env env, Napi::Value v, kvm_sregs* s);
/**
 * Like SregsFromJs, but only the fields present in `v` are set in `s`; `mask` gets all-ones
 * bytes over each field that was set and zeros elsewhere.
 */
void SregsOverridesFromJs(Napi::Env env, Napi::Value v, kvm_sregs* s, kvm_sregs* mask);

Napi::Object CpuidEntryToJs(Napi::Env env, const kvm_cpuid_entry2& e);
void CpuidEntryFromJs(Napi::Env env, Napi::Value v, kvm_cpuid_entry2* e);

}  // namespace kindling
