#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { const char *buf; size_t a, b; int variant, pf; uint64_t out; pthread_barrier_t *bar; } job;
__attribute__((target("avx2"))) static uint64_t rd_avx2(const char *p, size_t n, int pf) {
  __m256i s0=_mm256_setzero_si256(),s1=s0,s2=s0,s3=s0;
  for (size_t i=0;i<n;i+=128){ if(pf)_mm_prefetch(p+i+pf,_MM_HINT_T0),_mm_prefetch(p+i+pf+64,_MM_HINT_T0);
    s0=_mm256_xor_si256(s0,_mm256_load_si256((const __m256i*)(p+i)));
    s1=_mm256_xor_si256(s1,_mm256_load_si256((const __m256i*)(p+i+32)));
    s2=_mm256_xor_si256(s2,_mm256_load_si256((const __m256i*)(p+i+64)));
    s3=_mm256_xor_si256(s3,_mm256_load_si256((const __m256i*)(p+i+96)));}
  s0=_mm256_xor_si256(_mm256_xor_si256(s0,s1),_mm256_xor_si256(s2,s3));
  return (uint64_t)_mm256_extract_epi64(s0,0);
}
__attribute__((target("avx512f"))) static uint64_t rd_avx512(const char *p, size_t n, int pf) {
  __m512i s0=_mm512_setzero_si512(),s1=s0,s2=s0,s3=s0;
  for (size_t i=0;i<n;i+=256){ if(pf){for(int k=0;k<256;k+=64)_mm_prefetch(p+i+pf+k,_MM_HINT_T0);}
    s0=_mm512_xor_si512(s0,_mm512_load_si512((const void*)(p+i)));
    s1=_mm512_xor_si512(s1,_mm512_load_si512((const void*)(p+i+64)));
    s2=_mm512_xor_si512(s2,_mm512_load_si512((const void*)(p+i+128)));
    s3=_mm512_xor_si512(s3,_mm512_load_si512((const void*)(p+i+192)));}
  s0=_mm512_xor_si512(_mm512_xor_si512(s0,s1),_mm512_xor_si512(s2,s3));
  return (uint64_t)_mm_cvtsi128_si64(_mm512_castsi512_si128(s0));
}
static uint64_t rd_scalar(const char *p, size_t n){const uint64_t*q=(const uint64_t*)p;uint64_t s0=0,s1=0,s2=0,s3=0;
  for(size_t i=0;i<n/8;i+=4){s0^=q[i];s1^=q[i+1];s2^=q[i+2];s3^=q[i+3];}return s0^s1^s2^s3;}
static void *run(void *v){job*j=v;pthread_barrier_wait(j->bar);
  const char*p=j->buf+j->a;size_t n=j->b-j->a;
  j->out = j->variant==0?rd_scalar(p,n):j->variant==1?rd_avx2(p,n,j->pf):rd_avx512(p,n,j->pf);
  return NULL;}
int main(int argc,char**argv){
  int avx512 = __builtin_cpu_supports("avx512f");
  size_t bytes=(size_t)1<<30; char*buf=aligned_alloc(4096,bytes); memset(buf,1,bytes);
  const char *vn[]={"scalar","avx2","avx512"};
  for(int round=0;round<2;round++)
  for(int th=1;th<=2;th++) for(int v=0;v<3;v++){ if(v==2&&!avx512)continue;
    int pfs[]={0,1024,4096}; for(int pi=0;pi<(v?3:1);pi++){
    double best=0;
    for(int r=0;r<3;r++){ pthread_barrier_t bar; pthread_barrier_init(&bar,NULL,th+1); pthread_t t[4]; job js[4];
      for(int i=0;i<th;i++){js[i]=(job){buf,bytes/th*i,bytes/th*(i+1),v,pfs[pi],0,&bar};pthread_create(&t[i],0,run,&js[i]);}
      pthread_barrier_wait(&bar); double t0=now(); for(int i=0;i<th;i++)pthread_join(t[i],0); double dt=now()-t0;
      if(bytes/dt>best)best=bytes/dt; pthread_barrier_destroy(&bar);}
    printf("round %d threads %d %-7s pf %4d: %.2f GB/s\n",round,th,vn[v],pfs[pi],best/1e9); fflush(stdout);}}
  return 0;}
