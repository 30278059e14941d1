#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { const char *p; size_t n; uint64_t out; int pf; } job;
__attribute__((target("avx2"))) static void *run(void *v) { job *j=v; const char*p=j->p; size_t n=j->n;
  __m256i s0=_mm256_setzero_si256(),s1=s0,s2=s0,s3=s0;
  for (size_t i=0;i<n;i+=128){ if(j->pf){_mm_prefetch(p+i+j->pf,_MM_HINT_T0);_mm_prefetch(p+i+j->pf+64,_MM_HINT_T0);}
    s0=_mm256_xor_si256(s0,_mm256_loadu_si256((const __m256i*)(p+i)));
    s1=_mm256_xor_si256(s1,_mm256_loadu_si256((const __m256i*)(p+i+32)));
    s2=_mm256_xor_si256(s2,_mm256_loadu_si256((const __m256i*)(p+i+64)));
    s3=_mm256_xor_si256(s3,_mm256_loadu_si256((const __m256i*)(p+i+96)));}
  s0=_mm256_xor_si256(_mm256_xor_si256(s0,s1),_mm256_xor_si256(s2,s3)); j->out=_mm256_extract_epi64(s0,0); return NULL; }
static double bw(const char *p, size_t bytes, int th, int pf){ double best=0; for(int r=0;r<3;r++){ pthread_t t[2]; job js[2];
  double t0=now(); for(int i=0;i<th;i++){js[i]=(job){p+bytes/th*i,bytes/th,0,pf};pthread_create(&t[i],0,run,&js[i]);}
  for(int i=0;i<th;i++)pthread_join(t[i],0); double dt=now()-t0; if(bytes/dt>best)best=bytes/dt;} return best/1e9;}
int main(int argc,char**argv){ size_t bytes=(size_t)512<<20;
  int fd=open(argv[1],O_RDONLY); char*m=mmap(NULL,bytes,PROT_READ,MAP_SHARED,fd,0);
  char*a4=mmap(NULL,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); madvise(a4,bytes,MADV_NOHUGEPAGE); memset(a4,1,bytes);
  char*a2=aligned_alloc(1<<21,bytes); madvise(a2,bytes,MADV_HUGEPAGE); memset(a2,1,bytes);
  volatile uint64_t s=0; for(size_t i=0;i<bytes;i+=4096)s+=m[i]; /* fault in */
  for(int r=0;r<3;r++) for(int pf=0;pf<=4096;pf+=4096){
    printf("pf %4d: file mmap 4K %.2f | anon 4K %.2f | anon THP %.2f GB/s (2 threads)\n",pf,bw(m,bytes,2,pf),bw(a4,bytes,2,pf),bw(a2,bytes,2,pf)); fflush(stdout);}
  return 0;}
