// optc_runner: run a Relax VM executable (exported by tvm.compile(...).export_library) on CPU.
//
//   optc_runner LIB.so [--params PARAMS.bin] --outdir DIR [--warmup N] [--repeat N]
//               IN0.npy [IN1.npy ...]
//
// Loads LIB.so, creates the VM on (kDLCPU, 0), calls `main(in0, in1, ..., p0000, p0001, ...)`
// once, writes the (flattened) outputs to DIR/out0.npy, out1.npy, ..., then, if --repeat N > 0,
// runs --warmup untimed and N timed calls and prints {"times_s": [...]} on stdout.
// Parameters (--params) are a file written by tvm.runtime.save_param_dict; they are passed
// after the inputs in sorted key order. Any error: one line on stderr, exit status 1.
//
// Built with aarch64-linux-gnu-g++ against libtvm_runtime.so + libtvm_ffi.so from the aarch64
// wheels (only tvm-ffi headers are needed); rpath $ORIGIN:$ORIGIN/lib so that the binary runs on
// a board with the two libraries copied beside it.
#include "optc_main.h"

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------- NPY (v1/v2/v3) read/write
struct DTypeEntry {
  const char* descr;
  DLDataType dl;
};

const DTypeEntry kDTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f2", {kDLFloat, 16, 1}}, {"|i1", {kDLInt, 8, 1}},
    {"|u1", {kDLUInt, 8, 1}},   {"<i4", {kDLInt, 32, 1}},   {"<i8", {kDLInt, 64, 1}},
    {"|b1", {kDLBool, 8, 1}},   {"<f8", {kDLFloat, 64, 1}}, {"<i2", {kDLInt, 16, 1}},
    {"<u2", {kDLUInt, 16, 1}},  {"<u4", {kDLUInt, 32, 1}},  {"<u8", {kDLUInt, 64, 1}},
};

std::string DescrOf(DLDataType t) {
  for (const auto& e : kDTypes) {
    if (e.dl.code == t.code && e.dl.bits == t.bits && t.lanes == 1) return e.descr;
  }
  // TVM's bool tensors are sometimes reported as uint1/int1 with 8-bit storage.
  if (t.bits == 1 && t.lanes == 1) return "|b1";
  std::ostringstream os;
  os << "unsupported output dtype (code=" << int(t.code) << ", bits=" << int(t.bits)
     << ", lanes=" << t.lanes << ")";
  throw Fail(os.str());
}

// Value of 'key' in a Python dict literal header (returns the raw text after the colon).
std::string HeaderField(const std::string& h, const std::string& key, const std::string& path) {
  size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) throw Fail(path + ": npy header has no '" + key + "'");
  size_t c = h.find(':', k);
  if (c == std::string::npos) throw Fail(path + ": malformed npy header");
  size_t s = h.find_first_not_of(' ', c + 1);
  return h.substr(s);
}

struct CpuAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    size_t rounded = ((n == 0 ? 1 : n) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, rounded);
    if (t->data == nullptr) throw Fail("out of memory allocating tensor");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Fail("cannot open input " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Fail(path + ": not a .npy file");
  int major = static_cast<unsigned char>(magic[6]);
  uint32_t hlen = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) throw Fail(path + ": truncated npy header");
    hlen = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) throw Fail(path + ": truncated npy header");
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  } else {
    throw Fail(path + ": unsupported npy version " + std::to_string(major));
  }
  std::string h(hlen, '\0');
  if (!f.read(&h[0], hlen)) throw Fail(path + ": truncated npy header");

  std::string d = HeaderField(h, "descr", path);
  if (d.size() < 2 || d[0] != '\'') throw Fail(path + ": malformed descr");
  std::string descr = d.substr(1, d.find('\'', 1) - 1);
  if (descr == "=f4" || descr == "=f2" || descr == "=i4" || descr == "=i8") descr[0] = '<';
  if (descr == "<i1" || descr == "<u1" || descr == "<b1") descr[0] = '|';
  const DTypeEntry* dt = nullptr;
  for (const auto& e : kDTypes)
    if (descr == e.descr) dt = &e;
  if (!dt) throw Fail(path + ": unsupported dtype '" + descr + "' (need little-endian)");

  if (HeaderField(h, "fortran_order", path).rfind("False", 0) != 0)
    throw Fail(path + ": fortran_order arrays are not supported (use C order)");

  std::string s = HeaderField(h, "shape", path);
  if (s.empty() || s[0] != '(') throw Fail(path + ": malformed shape");
  std::vector<int64_t> shape;
  size_t i = 1;
  while (i < s.size() && s[i] != ')') {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      shape.push_back(std::stoll(s.substr(i, j - i)));
      i = j;
    } else {
      ++i;
    }
  }
  if (i >= s.size()) throw Fail(path + ": malformed shape");

  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           dt->dl, cpu);
  size_t nbytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  if (nbytes && !f.read(static_cast<char*>(t.data_ptr()), nbytes))
    throw Fail(path + ": file holds fewer bytes than its shape needs");
  return t;
}

void WriteNpy(const std::string& path, const DLTensor& t) {
  if (t.device.device_type != kDLCPU) throw Fail("output is not on CPU");
  if (!ffi::IsContiguous(t)) throw Fail("output tensor is not contiguous");
  std::ostringstream hs;
  hs << "{'descr': '" << DescrOf(t.dtype) << "', 'fortran_order': False, 'shape': (";
  for (int k = 0; k < t.ndim; ++k) hs << t.shape[k] << (t.ndim == 1 || k + 1 < t.ndim ? ", " : "");
  hs << "), }";
  std::string h = hs.str();
  // v1 header: magic(6) ver(2) len(2) + header, padded with spaces + '\n' to a multiple of 64.
  size_t total = 10 + h.size() + 1;
  size_t pad = (64 - total % 64) % 64;
  h += std::string(pad, ' ') + "\n";
  bool v2 = h.size() > 65535;
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Fail("cannot write " + path);
  f.write("\x93NUMPY", 6);
  if (v2) {
    // Recompute padding for the 12-byte v2 preamble.
    h = hs.str();
    total = 12 + h.size() + 1;
    pad = (64 - total % 64) % 64;
    h += std::string(pad, ' ') + "\n";
    const char ver[2] = {2, 0};
    f.write(ver, 2);
    uint32_t n = static_cast<uint32_t>(h.size());
    unsigned char b[4] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8),
                          static_cast<unsigned char>(n >> 16), static_cast<unsigned char>(n >> 24)};
    f.write(reinterpret_cast<char*>(b), 4);
  } else {
    const char ver[2] = {1, 0};
    f.write(ver, 2);
    uint16_t n = static_cast<uint16_t>(h.size());
    unsigned char b[2] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8)};
    f.write(reinterpret_cast<char*>(b), 2);
  }
  f.write(h.data(), h.size());
  size_t nbytes = ffi::GetDataSize(t);
  f.write(static_cast<const char*>(t.data) + t.byte_offset, nbytes);
  if (!f) throw Fail("error writing " + path);
}

// Flatten a VM result (Tensor, or nested Array/tuple of Tensors) in order.
void Flatten(const ffi::Any& v, std::vector<ffi::Tensor>* out) {
  if (auto t = v.as<ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = v.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& e : *arr) Flatten(e, out);
  } else {
    throw Fail("unsupported output type '" + v.GetTypeKey() + "' (expected Tensor or tuple)");
  }
}

int64_t ParseCount(const std::string& flag, const char* v) {
  char* end = nullptr;
  long long n = std::strtoll(v, &end, 10);
  if (end == v || *end != '\0' || n < 0) throw Fail(flag + " expects a non-negative integer");
  return n;
}

const char* kUsage =
    "usage: optc_runner LIB.so [--params PARAMS.bin] --outdir DIR [--warmup N] [--repeat N] "
    "[--sets K] IN0.npy [IN1.npy ...]  (K sets of inputs, one after the other: set 0 writes "
    "out<k>.npy, set s > 0 writes s<s>_out<k>.npy; timing runs set 0)";

int Run(int argc, char** argv) {
  std::string lib, params, outdir;
  int64_t warmup = 0, repeat = 0, sets = 1;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) throw Fail(a + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (a == "--params") {
      params = next();
    } else if (a == "--outdir") {
      outdir = next();
    } else if (a == "--warmup") {
      warmup = ParseCount(a, next());
    } else if (a == "--repeat") {
      repeat = ParseCount(a, next());
    } else if (a == "--sets") {
      sets = ParseCount(a, next());
      if (sets < 1) throw Fail("--sets expects a positive integer");
    } else if (a == "-h" || a == "--help") {
      std::cout << kUsage << "\n";
      return 0;
    } else if (a.rfind("--", 0) == 0) {
      throw Fail("unknown option " + a + "; " + kUsage);
    } else if (lib.empty()) {
      lib = a;
    } else {
      inputs.push_back(a);
    }
  }
  if (lib.empty() || outdir.empty()) throw Fail(std::string("missing LIB.so or --outdir; ") + kUsage);

  {
    std::ifstream probe(lib, std::ios::binary);
    if (!probe) throw Fail("cannot open library " + lib);
  }

  // Optional extras (argsort/topk/random kernels): used when libtvm_runtime_extra.so sits
  // beside the binary (found through the RUNPATH); absent is fine for most models.
  if (std::getenv("OPTC_RUNNER_NO_EXTRA") == nullptr) {
    dlopen("libtvm_runtime_extra.so", RTLD_NOW | RTLD_GLOBAL);
  }

  // Load the library and create the VM on CPU with the pooled allocator (as relax.VirtualMachine).
  ffi::Module mod = ffi::Module::LoadFromFile(lib);
  ffi::Optional<ffi::Function> load_exec = mod->GetFunction("vm_load_executable", true);
  if (!load_exec.has_value())
    throw Fail(lib + " is not a Relax VM executable (no vm_load_executable)");
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  ffi::Optional<ffi::Function> init = vm->GetFunction("vm_initialization", false);
  if (!init.has_value()) throw Fail("VM has no vm_initialization");
  constexpr int kPooledAllocator = 2;
  (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  ffi::Optional<ffi::Function> main_fn = vm->GetFunction("main", false);
  if (!main_fn.has_value()) throw Fail(lib + " has no function 'main'");

  if (inputs.size() % static_cast<size_t>(sets) != 0)
    throw Fail("--sets " + std::to_string(sets) + " does not divide the " + std::to_string(inputs.size()) +
               " input files");
  const size_t per_set = inputs.size() / static_cast<size_t>(sets);
  std::vector<ffi::Any> weights;
  if (!params.empty()) {
    {
      std::ifstream probe(params, std::ios::binary);
      if (!probe) throw Fail("cannot open params file " + params);
    }
    ffi::Function load_params = ffi::Function::GetGlobalRequired("runtime.LoadParamsFromFile");
    auto pmap = load_params(ffi::String(params)).cast<ffi::Map<ffi::String, ffi::Tensor>>();
    std::vector<std::pair<std::string, ffi::Tensor>> sorted;
    for (const auto& kv : pmap) sorted.emplace_back(std::string(kv.first), kv.second);
    std::sort(sorted.begin(), sorted.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& kv : sorted) weights.push_back(kv.second);
  }
  std::vector<ffi::Any> args;
  std::vector<ffi::AnyView> views;
  auto load_set = [&](int64_t s) {
    args.clear();
    for (size_t i = 0; i < per_set; ++i) args.push_back(ReadNpy(inputs[s * per_set + i]));
    for (const auto& w : weights) args.push_back(w);
    views.assign(args.begin(), args.end());
  };

  auto call = [&]() {
    ffi::Any result;
    main_fn.value().CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    return result;
  };

  for (int64_t s = sets - 1; s >= 0; --s) {  // set 0 last: its arguments stay for timing
    load_set(s);
    ffi::Any result = call();
    std::vector<ffi::Tensor> outs;
    Flatten(result, &outs);
    const std::string prefix = outdir + (s == 0 ? "/out" : "/s" + std::to_string(s) + "_out");
    for (size_t k = 0; k < outs.size(); ++k) {
      WriteNpy(prefix + std::to_string(k) + ".npy", *outs[k].GetDLTensorPtr());
    }
  }

  if (repeat > 0) {
    for (int64_t k = 0; k < warmup; ++k) call();
    std::vector<double> times;
    times.reserve(repeat);
    for (int64_t k = 0; k < repeat; ++k) {
      auto t0 = std::chrono::steady_clock::now();
      ffi::Any r = call();
      auto t1 = std::chrono::steady_clock::now();
      times.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    std::ostringstream os;
    os.precision(9);
    os << "{\"times_s\": [";
    for (size_t k = 0; k < times.size(); ++k) os << (k ? ", " : "") << times[k];
    os << "]}";
    std::cout << os.str() << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return optc::MainReportingErrors("optc_runner", Run, argc, argv); }
