/* Peak int8 dot-product rate of this CPU: vpdpbusd zmm (AVX-512 VNNI, 64 u8 x s8 MACs each)
 * on 12 independent accumulators per thread, no memory traffic. Prints GMAC/s for the number
 * of OpenMP threads (OMP_NUM_THREADS); best of 5 runs. Used by bench_quant.py to put the int8
 * latencies against the hardware's ceiling.
 *   cc -O2 -fopenmp -mavx512f -mavx512vnni -o vnni_peak vnni_peak.c && OMP_NUM_THREADS=2 ./vnni_peak */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

int main(void) {
  const long iters = 20000000;  /* x 12 instructions x 64 MACs per thread */
  double best = 1e30;
  int threads = 1;
  long sink = 0;
  for (int run = 0; run < 5; run++) {
    double t0 = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
    {
      __m512i a[12];
      __m512i x = _mm512_set1_epi32(0x01020304), w = _mm512_set1_epi32(0x05060708);
      for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
      for (long n = 0; n < iters; n++) {
#define D(i) a[i] = _mm512_dpbusd_epi32(a[i], x, w);
        D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9) D(10) D(11)  /* unrolled: registers, not memory */
        __asm__ volatile("" : "+v"(x));
      }
      for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_epi32(a[i]);
#pragma omp single
      threads = omp_get_num_threads();
    }
    double t = omp_get_wtime() - t0;
    if (t < best) best = t;
  }
  double macs = (double)iters * 12 * 64 * threads;
  printf("{\"threads\": %d, \"gmac_per_s\": %.1f, \"seconds\": %.4f, \"sink\": %ld}\n", threads, macs / best / 1e9,
         best, sink & 1);
  return 0;
}
