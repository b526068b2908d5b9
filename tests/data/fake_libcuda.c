/* A stand-in for libcuda.so.1 that records the driver calls of sglang_ampere.device_kit.runtime.
 *
 * Each call appends one line to the file named by FAKE_CUDA_LOG. cuLaunchKernel dumps every
 * kernel parameter as hex bytes, using the sizes set with fake_set_param_sizes (the real driver
 * knows them from the cubin). An entry name starting with "fail_" makes cuModuleGetFunction
 * return CUDA_ERROR_NOT_FOUND (500), so the error path can be tested too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_sizes = 0;
static int sizes[64];

static FILE *log_file(void) {
  const char *p = getenv("FAKE_CUDA_LOG");
  return fopen(p ? p : "/dev/null", "a");
}

void fake_set_param_sizes(int n, const int *s) {
  n_sizes = n;
  for (int i = 0; i < n && i < 64; i++) sizes[i] = s[i];
}

int cuInit(unsigned flags) {
  FILE *f = log_file(); fprintf(f, "cuInit %u\n", flags); fclose(f); return 0;
}
int cuDeviceGet(int *dev, int ordinal) {
  *dev = ordinal; FILE *f = log_file(); fprintf(f, "cuDeviceGet %d\n", ordinal); fclose(f); return 0;
}
int cuCtxGetCurrent(void **ctx) { *ctx = NULL; return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int dev) {
  *ctx = (void *)0x1000; FILE *f = log_file(); fprintf(f, "cuDevicePrimaryCtxRetain %d\n", dev); fclose(f); return 0;
}
int cuCtxSetCurrent(void *ctx) {
  FILE *f = log_file(); fprintf(f, "cuCtxSetCurrent %p\n", ctx); fclose(f); return 0;
}
int cuModuleLoadData(void **mod, const void *image) {
  const unsigned char *b = (const unsigned char *)image;
  *mod = (void *)0x2000;
  FILE *f = log_file(); fprintf(f, "cuModuleLoadData %02x%02x%02x%02x\n", b[0], b[1], b[2], b[3]); fclose(f);
  return 0;
}
int cuModuleGetFunction(void **fn, void *mod, const char *name) {
  FILE *f = log_file(); fprintf(f, "cuModuleGetFunction %s\n", name); fclose(f);
  if (strncmp(name, "fail_", 5) == 0) return 500;
  *fn = (void *)0x3000;
  return 0;
}
int cuFuncSetAttribute(void *fn, int attr, int value) {
  FILE *f = log_file(); fprintf(f, "cuFuncSetAttribute %d %d\n", attr, value); fclose(f); return 0;
}
int cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned smem, void *stream, void **params, void **extra) {
  FILE *f = log_file();
  fprintf(f, "cuLaunchKernel grid %u %u %u block %u %u %u smem %u stream %p extra %p\n", gx, gy, gz, bx, by, bz,
          smem, stream, (void *)extra);
  for (int i = 0; i < n_sizes; i++) {
    const unsigned char *p = (const unsigned char *)params[i];
    fprintf(f, "param %d ", i);
    for (int j = sizes[i] - 1; j >= 0; j--) fprintf(f, "%02x", p[j]);   /* little endian -> big-endian hex */
    fprintf(f, "\n");
  }
  fclose(f);
  return 0;
}
int cuGetErrorName(int err, const char **name) {
  *name = err == 500 ? "CUDA_ERROR_NOT_FOUND" : "CUDA_ERROR_UNKNOWN";
  return 0;
}
