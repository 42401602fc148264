#include "convert.h"

#include <cmath>
#include <cstring>
#include <string>

#include "errors.h"

namespace kindling {

namespace {

constexpr double kMaxSafe = 9007199254740991.0;  // 2^53 - 1

Napi::Value Field(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) ThrowType(env, std::string("missing field '") + key + "'");
  return v;
}

uint32_t FieldU32(Napi::Env env, Napi::Object o, const char* key) {
  Napi::Value v = Field(env, o, key);
  if (!v.IsNumber()) ThrowType(env, std::string("field '") + key + "' must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || std::floor(d) != d) {
    ThrowRange(env, std::string("field '") + key + "' must be an integer in [0, 2^32)");
  }
  return static_cast<uint32_t>(d);
}

uint64_t FieldU64(Napi::Env env, Napi::Object o, const char* key) {
  return ValueToU64(env, Field(env, o, key), key);
}

Napi::Object AsObject(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsObject()) ThrowType(env, std::string(what) + " must be an object");
  return v.As<Napi::Object>();
}

Napi::BigInt Big(Napi::Env env, uint64_t v) { return Napi::BigInt::New(env, v); }
Napi::Number Num(Napi::Env env, double v) { return Napi::Number::New(env, v); }

Napi::Object SegmentToJs(Napi::Env env, const kvm_segment& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("base", Big(env, s.base));
  o.Set("limit", Num(env, s.limit));
  o.Set("selector", Num(env, s.selector));
  o.Set("type", Num(env, s.type));
  o.Set("present", Num(env, s.present));
  o.Set("dpl", Num(env, s.dpl));
  o.Set("db", Num(env, s.db));
  o.Set("s", Num(env, s.s));
  o.Set("l", Num(env, s.l));
  o.Set("g", Num(env, s.g));
  o.Set("avl", Num(env, s.avl));
  o.Set("unusable", Num(env, s.unusable));
  return o;
}

uint8_t FieldU8(Napi::Env env, Napi::Object o, const char* key) {
  uint32_t v = FieldU32(env, o, key);
  if (v > 0xff) ThrowRange(env, std::string("field '") + key + "' must fit in 8 bits");
  return static_cast<uint8_t>(v);
}

void SegmentFromJs(Napi::Env env, Napi::Value v, const char* what, kvm_segment* s) {
  Napi::Object o = AsObject(env, v, what);
  s->base = FieldU64(env, o, "base");
  s->limit = FieldU32(env, o, "limit");
  uint32_t selector = FieldU32(env, o, "selector");
  if (selector > 0xffff) ThrowRange(env, "segment selector must fit in 16 bits");
  s->selector = static_cast<uint16_t>(selector);
  s->type = FieldU8(env, o, "type");
  s->present = FieldU8(env, o, "present");
  s->dpl = FieldU8(env, o, "dpl");
  s->db = FieldU8(env, o, "db");
  s->s = FieldU8(env, o, "s");
  s->l = FieldU8(env, o, "l");
  s->g = FieldU8(env, o, "g");
  s->avl = FieldU8(env, o, "avl");
  s->unusable = FieldU8(env, o, "unusable");
  s->padding = 0;
}

Napi::Object DtableToJs(Napi::Env env, const kvm_dtable& d) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("base", Big(env, d.base));
  o.Set("limit", Num(env, d.limit));
  return o;
}

void DtableFromJs(Napi::Env env, Napi::Value v, const char* what, kvm_dtable* d) {
  Napi::Object o = AsObject(env, v, what);
  d->base = FieldU64(env, o, "base");
  uint32_t limit = FieldU32(env, o, "limit");
  if (limit > 0xffff) ThrowRange(env, "descriptor table limit must fit in 16 bits");
  d->limit = static_cast<uint16_t>(limit);
  d->padding[0] = d->padding[1] = d->padding[2] = 0;
}

}  // namespace

uint64_t ValueToU64(Napi::Env env, Napi::Value v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t out = v.As<Napi::BigInt>().Uint64Value(&lossless);
    // Negative bigints down to -2^63 wrap to their two's complement, which is what registers hold.
    if (!lossless) {
      int64_t s = v.As<Napi::BigInt>().Int64Value(&lossless);
      if (!lossless) ThrowRange(env, std::string(what) + " does not fit in 64 bits");
      out = static_cast<uint64_t>(s);
    }
    return out;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(std::fabs(d) <= kMaxSafe) || std::floor(d) != d) {
      ThrowRange(env, std::string(what) + " must be a safe integer or a bigint");
    }
    return d < 0 ? static_cast<uint64_t>(static_cast<int64_t>(d)) : static_cast<uint64_t>(d);
  }
  ThrowType(env, std::string(what) + " must be a bigint");
}

ByteView BytesOf(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray()) ThrowType(env, std::string(what) + " must be a Buffer");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  ByteView out;
  out.data = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  out.size = ta.ByteLength();
  return out;
}

Napi::Buffer<uint8_t> CopyToBuffer(Napi::Env env, const void* data, size_t n) {
  return Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(data), n);
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) ThrowType(env, std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || std::floor(d) != d) {
    ThrowRange(env, std::string(what) + " must be an integer in [0, 2^32)");
  }
  return static_cast<uint32_t>(d);
}

uint64_t ArgSafeU64(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) ThrowType(env, std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= kMaxSafe) || std::floor(d) != d) {
    ThrowRange(env, std::string(what) + " must be a non-negative safe integer");
  }
  return static_cast<uint64_t>(d);
}

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) ThrowType(env, "fd must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 2147483647.0) || std::floor(d) != d) ThrowRange(env, "fd must be a non-negative int32");
  return static_cast<int>(d);
}

Napi::Object RegsToJs(Napi::Env env, const kvm_regs& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("rax", Big(env, r.rax));
  o.Set("rbx", Big(env, r.rbx));
  o.Set("rcx", Big(env, r.rcx));
  o.Set("rdx", Big(env, r.rdx));
  o.Set("rsi", Big(env, r.rsi));
  o.Set("rdi", Big(env, r.rdi));
  o.Set("rsp", Big(env, r.rsp));
  o.Set("rbp", Big(env, r.rbp));
  o.Set("r8", Big(env, r.r8));
  o.Set("r9", Big(env, r.r9));
  o.Set("r10", Big(env, r.r10));
  o.Set("r11", Big(env, r.r11));
  o.Set("r12", Big(env, r.r12));
  o.Set("r13", Big(env, r.r13));
  o.Set("r14", Big(env, r.r14));
  o.Set("r15", Big(env, r.r15));
  o.Set("rip", Big(env, r.rip));
  o.Set("rflags", Big(env, r.rflags));
  return o;
}

void RegsFromJs(Napi::Env env, Napi::Value v, kvm_regs* r) {
  Napi::Object o = AsObject(env, v, "regs");
  r->rax = FieldU64(env, o, "rax");
  r->rbx = FieldU64(env, o, "rbx");
  r->rcx = FieldU64(env, o, "rcx");
  r->rdx = FieldU64(env, o, "rdx");
  r->rsi = FieldU64(env, o, "rsi");
  r->rdi = FieldU64(env, o, "rdi");
  r->rsp = FieldU64(env, o, "rsp");
  r->rbp = FieldU64(env, o, "rbp");
  r->r8 = FieldU64(env, o, "r8");
  r->r9 = FieldU64(env, o, "r9");
  r->r10 = FieldU64(env, o, "r10");
  r->r11 = FieldU64(env, o, "r11");
  r->r12 = FieldU64(env, o, "r12");
  r->r13 = FieldU64(env, o, "r13");
  r->r14 = FieldU64(env, o, "r14");
  r->r15 = FieldU64(env, o, "r15");
  r->rip = FieldU64(env, o, "rip");
  r->rflags = FieldU64(env, o, "rflags");
}

Napi::Object SregsToJs(Napi::Env env, const kvm_sregs& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("cs", SegmentToJs(env, s.cs));
  o.Set("ds", SegmentToJs(env, s.ds));
  o.Set("es", SegmentToJs(env, s.es));
  o.Set("fs", SegmentToJs(env, s.fs));
  o.Set("gs", SegmentToJs(env, s.gs));
  o.Set("ss", SegmentToJs(env, s.ss));
  o.Set("tr", SegmentToJs(env, s.tr));
  o.Set("ldt", SegmentToJs(env, s.ldt));
  o.Set("gdt", DtableToJs(env, s.gdt));
  o.Set("idt", DtableToJs(env, s.idt));
  o.Set("cr0", Big(env, s.cr0));
  o.Set("cr2", Big(env, s.cr2));
  o.Set("cr3", Big(env, s.cr3));
  o.Set("cr4", Big(env, s.cr4));
  o.Set("cr8", Big(env, s.cr8));
  o.Set("efer", Big(env, s.efer));
  o.Set("apicBase", Big(env, s.apic_base));
  return o;
}

void SregsOverridesFromJs(Napi::Env env, Napi::Value v, kvm_sregs* s, kvm_sregs* mask) {
  Napi::Object o = AsObject(env, v, "sregs");
  std::memset(mask, 0, sizeof *mask);
  struct SegField {
    const char* key;
    kvm_segment* seg;
    kvm_segment* mask;
  };
  for (const SegField& f : {SegField{"cs", &s->cs, &mask->cs}, SegField{"ds", &s->ds, &mask->ds},
                            SegField{"es", &s->es, &mask->es}, SegField{"fs", &s->fs, &mask->fs},
                            SegField{"gs", &s->gs, &mask->gs}, SegField{"ss", &s->ss, &mask->ss},
                            SegField{"tr", &s->tr, &mask->tr}, SegField{"ldt", &s->ldt, &mask->ldt}}) {
    Napi::Value seg = o.Get(f.key);
    if (seg.IsUndefined()) continue;
    SegmentFromJs(env, seg, f.key, f.seg);
    std::memset(f.mask, 0xff, sizeof *f.mask);
  }
  for (const auto& f : {std::make_pair("gdt", std::make_pair(&s->gdt, &mask->gdt)),
                        std::make_pair("idt", std::make_pair(&s->idt, &mask->idt))}) {
    Napi::Value dt = o.Get(f.first);
    if (dt.IsUndefined()) continue;
    DtableFromJs(env, dt, f.first, f.second.first);
    // The padding stays KVM's: only base and limit are fields.
    f.second.second->base = ~__u64(0);
    f.second.second->limit = 0xffff;
  }
  struct U64Field {
    const char* key;
    __u64* field;
    __u64* mask;
  };
  for (const U64Field& f : {U64Field{"cr0", &s->cr0, &mask->cr0}, U64Field{"cr2", &s->cr2, &mask->cr2},
                            U64Field{"cr3", &s->cr3, &mask->cr3}, U64Field{"cr4", &s->cr4, &mask->cr4},
                            U64Field{"cr8", &s->cr8, &mask->cr8}, U64Field{"efer", &s->efer, &mask->efer},
                            U64Field{"apicBase", &s->apic_base, &mask->apic_base}}) {
    if (o.Get(f.key).IsUndefined()) continue;
    *f.field = FieldU64(env, o, f.key);
    *f.mask = ~__u64(0);
  }
}

void SregsFromJs(Napi::Env env, Napi::Value v, kvm_sregs* s) {
  Napi::Object o = AsObject(env, v, "sregs");
  SegmentFromJs(env, Field(env, o, "cs"), "cs", &s->cs);
  SegmentFromJs(env, Field(env, o, "ds"), "ds", &s->ds);
  SegmentFromJs(env, Field(env, o, "es"), "es", &s->es);
  SegmentFromJs(env, Field(env, o, "fs"), "fs", &s->fs);
  SegmentFromJs(env, Field(env, o, "gs"), "gs", &s->gs);
  SegmentFromJs(env, Field(env, o, "ss"), "ss", &s->ss);
  SegmentFromJs(env, Field(env, o, "tr"), "tr", &s->tr);
  SegmentFromJs(env, Field(env, o, "ldt"), "ldt", &s->ldt);
  DtableFromJs(env, Field(env, o, "gdt"), "gdt", &s->gdt);
  DtableFromJs(env, Field(env, o, "idt"), "idt", &s->idt);
  s->cr0 = FieldU64(env, o, "cr0");
  s->cr2 = FieldU64(env, o, "cr2");
  s->cr3 = FieldU64(env, o, "cr3");
  s->cr4 = FieldU64(env, o, "cr4");
  s->cr8 = FieldU64(env, o, "cr8");
  s->efer = FieldU64(env, o, "efer");
  s->apic_base = FieldU64(env, o, "apicBase");
}

Napi::Object CpuidEntryToJs(Napi::Env env, const kvm_cpuid_entry2& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("function", Num(env, e.function));
  o.Set("index", Num(env, e.index));
  o.Set("flags", Num(env, e.flags));
  o.Set("eax", Num(env, e.eax));
  o.Set("ebx", Num(env, e.ebx));
  o.Set("ecx", Num(env, e.ecx));
  o.Set("edx", Num(env, e.edx));
  return o;
}

void CpuidEntryFromJs(Napi::Env env, Napi::Value v, kvm_cpuid_entry2* e) {
  Napi::Object o = AsObject(env, v, "cpuid entry");
  e->function = FieldU32(env, o, "function");
  e->index = FieldU32(env, o, "index");
  e->flags = FieldU32(env, o, "flags");
  e->eax = FieldU32(env, o, "eax");
  e->ebx = FieldU32(env, o, "ebx");
  e->ecx = FieldU32(env, o, "ecx");
  e->edx = FieldU32(env, o, "edx");
  e->padding[0] = e->padding[1] = e->padding[2] = 0;
}

}  // namespace kindling
