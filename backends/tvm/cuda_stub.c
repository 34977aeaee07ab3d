/*
 * optc's build-time stand-in for the NVIDIA driver library (libcuda.so.1).
 *
 * Why: the apache-tvm 0.27 wheel keeps its CUDA runtime in libtvm_runtime_cuda.so, which is
 * linked against libcuda.so.1. On a machine with no NVIDIA driver that library cannot be
 * loaded, TVM's "ffi.Module.create.cuda" is never registered, and tvm.compile silently emits a
 * source-only fallback module (CUDA C text, no machine code) that cannot run anywhere.
 * With this stub loaded first (soname libcuda.so.1), libtvm_runtime_cuda.so loads, and TVM
 * compiles real device code with nvcc (TVM_CUDA_COMPILE_MODE=nvcc) into a fatbin.
 *
 * What: every entry point the TVM CUDA runtime imports (plus the ones libcudart probes when
 * it looks for a driver) returns CUDA_ERROR_NO_DEVICE, so "is there a GPU?" answers no and
 * nothing can be launched. It is only ever loaded when the real driver cannot be
 * (optc.backends.tvm.cuda.ensure_runtime), never beside it.
 *
 * Built by optc at first use: gcc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1
 */
#include <stddef.h>

typedef int CUresult;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_NO_DEVICE 100

static const char kName[] = "CUDA_ERROR_NO_DEVICE";
static const char kText[] =
    "no CUDA-capable device (optc's build-time libcuda stub is loaded: this machine has no "
    "NVIDIA driver)";

/* Driver initialisation and discovery (libcudart calls these through dlsym). */
CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_ERROR_NO_DEVICE; }
CUresult cuDriverGetVersion(int *version) { if (version) *version = 0; return CUDA_ERROR_NO_DEVICE; }
CUresult cuDeviceGetCount(int *count) { if (count) *count = 0; return CUDA_ERROR_NO_DEVICE; }
CUresult cuDeviceGet(int *device, int ordinal) { (void)ordinal; if (device) *device = -1; return CUDA_ERROR_NO_DEVICE; }
CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {
  (void)symbol; (void)version; (void)flags;
  if (pfn) *pfn = NULL;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags,
                             int *status) {
  (void)symbol; (void)version; (void)flags;
  if (pfn) *pfn = NULL;
  if (status) *status = 0;
  return CUDA_ERROR_NO_DEVICE;
}

/* Error strings: these succeed, so an error message built from them is readable. */
CUresult cuGetErrorName(CUresult error, const char **name) { (void)error; if (name) *name = kName; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult error, const char **text) { (void)error; if (text) *text = kText; return CUDA_SUCCESS; }

/* The driver API that libtvm_runtime_cuda.so (apache-tvm 0.27) imports. */
CUresult cuDeviceGetName(char *name, int len, int device) {
  (void)device;
  if (name && len > 0) name[0] = '\0';
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuFuncSetAttribute(void *func, int attrib, int value) { (void)func; (void)attrib; (void)value; return CUDA_ERROR_NO_DEVICE; }
CUresult cuLaunchKernelEx(const void *config, void *func, void **params, void **extra) {
  (void)config; (void)func; (void)params; (void)extra;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuModuleGetFunction(void **func, void *module, const char *name) {
  (void)module; (void)name;
  if (func) *func = NULL;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuModuleLoadData(void **module, const void *image) { (void)image; if (module) *module = NULL; return CUDA_ERROR_NO_DEVICE; }
CUresult cuModuleUnload(void *module) { (void)module; return CUDA_ERROR_NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void *map, int dtype, unsigned int rank, void *addr, const void *dims,
                                const void *strides, const void *box, const void *elem_strides,
                                int interleave, int swizzle, int l2promo, int oob_fill) {
  (void)map; (void)dtype; (void)rank; (void)addr; (void)dims; (void)strides; (void)box;
  (void)elem_strides; (void)interleave; (void)swizzle; (void)l2promo; (void)oob_fill;
  return CUDA_ERROR_NO_DEVICE;
}
