/* `flashmoe bench`: prefill and decode speed, and the floor the hardware sets, measured in the same run.
 *
 * Per decoded token the engine must move a known number of bytes: from disk, the expert bytes the page
 * cache or the expert cache did not hold (measured: the block-device bytes this process read, from
 * /proc/self/io); from memory, every resident matrix a token uses (all layer weights, lm_head), the
 * K experts of every layer, and the state it reads and writes (delta-net recurrent state, KV cache).
 * Disk bandwidth (random expert-record reads with O_DIRECT, through the same I/O engine) and memory
 * bandwidth (a streaming read of a buffer on all threads with vector loads: membw.h) are measured in
 * the same run, before and after the repetitions (the better of the two is used: both drift on a
 * shared host). The floor is the larger of bytes_disk / disk_bw and bytes_mem / mem_bw (reads can
 * overlap compute); the achieved fraction is floor / measured time per token.
 *
 * Prefill has its own floor: the larger of its arithmetic (multiply-adds per prompt token, counted from
 * the model's shapes, over the multiply-add peak of all threads at the kernel level in use, measured in
 * the same run: kernel_peak_mac_rate) and the bytes it
 * read from the block device per prompt token over the disk bandwidth.
 *
 * Where decoding falls short of a disk floor, the device's own counters (diskstat.h) taken around the
 * decode phase say why: the fraction of the time it had a read in flight, and its read rate while it
 * did. An idle disk is time the engine did not overlap; a rate below the measured bandwidth is the
 * device serving this pattern more slowly than the back-to-back batches it was measured with. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "diskstat.h"
#include "expert_io.h"
#include "kernels.h"
#include "membw.h"
#include "model.h"
#include "packed.h"
#include "util.h"

/* Bytes of the block device this process has read so far (/proc/self/io read_bytes). */
static double proc_read_bytes(void) {
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    double v = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "read_bytes:", 11)) v = atof(line + 11);
    if (f) fclose(f);
    return v;
}

/* Resident bytes one token reads: every layer matrix and the lm_head (the embedding: one row). */
static double dense_bytes_per_token(const model *m) {
    double b = (double)model_qmat_bytes(&m->lm_head);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const qmat *ms[LAYER_MATRICES];
        model_layer_matrices(&m->layers[l], ms);
        for (int i = 0; i < LAYER_MATRICES; i++) b += (double)model_qmat_bytes(ms[i]);
    }
    return b;
}

/* State bytes one decoded token moves besides the weights: each delta-net layer reads and writes its
 * recurrent state (f32, dk x dv per value head) and its conv window; each attention layer reads the K and
 * V cache (f32) over `ctx` positions (the average context of the decoded tokens) and writes one. */
static double state_bytes_per_token(const model *m, double ctx) {
    const model_config *c = &m->cfg;
    double b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (m->layers[l].type == LAYER_FULL_ATTENTION)
            b += 4.0 * 2 * c->n_kv_heads * c->head_dim * (ctx + 1);
        else {
            double conv_dim = 2.0 * c->lin_k_heads * c->lin_k_dim + (double)c->lin_v_heads * c->lin_v_dim;
            b += 4.0 * 2 * ((double)c->lin_v_heads * c->lin_k_dim * c->lin_v_dim + (c->conv_kernel - 1) * conv_dim);
        }
    }
    return b;
}

/* Multiply-adds a prompt token costs on average over a prompt of p tokens: every layer matrix (not the
 * lm_head: a prompt needs the logits of its last token only), the K routed experts, the delta net's
 * recurrence (4 dk x dv per value head: decay-and-read, update, output) and attention over (p + 1) / 2
 * positions on average (q k and p v per query head). */
static double prefill_macs_per_token(const model *m, int p) {
    const model_config *c = &m->cfg;
    double macs = (double)m->top_k * 3 * c->hidden_size * c->expert_inter;
    macs *= c->n_layers;
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *w = &m->layers[l];
        const qmat *ms[LAYER_MATRICES];
        model_layer_matrices(w, ms);
        for (int i = 0; i < LAYER_MATRICES; i++)
            if (ms[i]->data) macs += (double)ms[i]->rows * ms[i]->cols;
        if (w->type == LAYER_FULL_ATTENTION) macs += 2.0 * c->n_heads * c->head_dim * (p + 1) / 2.0;
        else macs += 4.0 * c->lin_v_heads * c->lin_k_dim * c->lin_v_dim;
    }
    return macs;
}

/* Random expert-record reads with O_DIRECT through the I/O engine, up to `budget` bytes. */
static double measure_disk_bw(const char *dir, int batch, size_t budget, char *err, size_t errlen) {
    if (!packed_is_dir(dir)) return 0;
    packed_manifest pm;
    if (packed_manifest_load(&pm, dir, err, errlen)) return -1;
    size_t rec = pm.layout.record_bytes;
    expert_io_config cfg = {.backend = EXPERT_IO_URING, .mode = EXPERT_IO_DIRECT, .max_requests = batch, .quiet = 1};
    expert_io *io = expert_io_create(&cfg, err, errlen);
    size_t buf_bytes = rec * (size_t)(batch < 64 ? batch : 64);
    void *buf = expert_io_buffer_alloc(buf_bytes); /* huge pages, as the expert cache uses */
    int *fds = calloc((size_t)pm.n_layers, sizeof(int));
    double bw = -1;
    if (!io || !buf || !fds) goto out;
    for (int l = 0; l < pm.n_layers; l++) {
        char path[4096];
        packed_expert_path(path, sizeof path, dir, l);
        if ((fds[l] = expert_io_open(io, path, err, errlen)) < 0) goto out;
    }
    uint64_t x = 88172645463325252ull;
    size_t done = 0;
    double t0 = util_now_seconds();
    while (done < budget) {
        expert_io_req r[64];
        for (int i = 0; i < batch && i < 64; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            int l = (int)(x % (uint64_t)pm.n_layers), e = (int)((x >> 20) % (uint64_t)pm.n_experts);
            r[i].n_pieces = 1;
            r[i].piece[0] = (expert_io_piece){.fd = fds[l], .offset = PACKED_HEADER_BYTES + (uint64_t)e * rec,
                                              .length = rec, .dest = (char *)buf + (size_t)i * rec};
        }
        if (expert_io_submit(io, r, batch < 64 ? batch : 64, err, errlen) || expert_io_wait_all(io, err, errlen))
            goto out;
        done += rec * (size_t)(batch < 64 ? batch : 64);
    }
    bw = done / (util_now_seconds() - t0);
out:
    expert_io_free(io);
    expert_io_buffer_free(buf);
    free(fds);
    return bw;
}

/* Moves this process into a fresh cgroup v1 memory cgroup limited to mb MiB (page cache included). */
static int apply_cap(int mb, char *path, size_t pathlen, char *err, size_t errlen) {
    snprintf(path, pathlen, "/sys/fs/cgroup/memory/flashmoe-bench-%d", (int)getpid());
    char f[512];
    FILE *fp;
    if (mkdir(path, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the cgroup (needs root and cgroup v1 memory): %s", path,
                 strerror(errno));
        return -1;
    }
    snprintf(f, sizeof f, "%s/memory.limit_in_bytes", path);
    if (!(fp = fopen(f, "w")) || fprintf(fp, "%lld\n", (long long)mb << 20) < 0 || fclose(fp)) {
        snprintf(err, errlen, "%s: cannot set the limit", f);
        return -1;
    }
    snprintf(f, sizeof f, "%s/cgroup.procs", path);
    if (!(fp = fopen(f, "w")) || fprintf(fp, "%d\n", (int)getpid()) < 0 || fclose(fp)) {
        snprintf(err, errlen, "%s: cannot join the cgroup", f);
        return -1;
    }
    return 0;
}

/* Memory bandwidth on `threads` threads (a 256 MB read) and the disk bandwidth of dir's experts (1 GiB of
 * random records, in batches of 8). */
static int measure_bandwidths(const char *dir, int threads, double *mem, double *disk, char *err, size_t errlen) {
    pool *p = pool_create(threads);
    *mem = membw_measure(p, (size_t)256 << 20);
    pool_free(p);
    *disk = measure_disk_bw(dir, 8, (size_t)1 << 30, err, errlen);
    return *disk < 0 ? -1 : 0;
}

static void release_cap(const char *path, double *peak) {
    char f[512], line[64];
    snprintf(f, sizeof f, "%s/memory.max_usage_in_bytes", path);
    FILE *fp = fopen(f, "r");
    if (fp && fgets(line, sizeof line, fp)) *peak = atof(line);
    if (fp) fclose(fp);
    fp = fopen("/sys/fs/cgroup/memory/cgroup.procs", "w");
    if (fp) {
        fprintf(fp, "%d\n", (int)getpid());
        fclose(fp);
    }
    rmdir(path);
}

static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) ss += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: flashmoe bench -m DIR [-p 512] [-n 128] [-r 5] [--cap-mb N] [--cold] [--json] [options]\n"
            "Measures prefill (p prompt tokens) and decode (n tokens) speed over r repetitions, with the floor\n"
            "set by the disk and memory bandwidth measured in the same run.\n\n"
            "  -p N          prompt tokens (default 512)\n"
            "  -n N          decoded tokens (default 128)\n"
            "  -r N          repetitions (default 5)\n"
            "  --cap-mb N    run under a cgroup memory cap of N MiB, page cache included (root, cgroup v1)\n"
            "  --cold        drop the page cache before each repetition (root)\n"
            "  --json        one JSON object on stdout\n" CLI_ENGINE_HELP);
}

int cmd_bench(int argc, char **argv) {
    const char *cmd = "bench", *v;
    engine_args ea = {0};
    int n_prompt = 512, n_gen = 128, reps = 5, cap_mb = 0, json = 0, cold = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_arg(cmd, &ea, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-p")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1 << 20, &n_prompt)) return 2;
        } else if (!strcmp(a, "-n")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1 << 20, &n_gen)) return 2;
        } else if (!strcmp(a, "-r")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1000, &reps)) return 2;
        } else if (!strcmp(a, "--cap-mb")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 16, 1 << 30, &cap_mb)) return 2;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--cold")) {
            cold = 1;
        } else {
            fprintf(stderr, "flashmoe bench: unknown option '%s' (see flashmoe bench --help)\n", a);
            return 2;
        }
    }
    if (!ea.dir) {
        fprintf(stderr, "flashmoe bench: -m DIR is required\n");
        return 2;
    }
    char err[8192], cg[256] = "";
    double peak = -1;
    int threads = ea.mo.threads > 1 ? ea.mo.threads : 1;
    pool *peak_pool = pool_create(threads);
    double peak_macs = 0; /* the prefill floor's arithmetic peak: best of 3 (a busy neighbour only lowers it) */
    for (int r = 0; r < 3; r++) {
        double pk = kernel_peak_mac_rate(peak_pool, 0.2);
        if (pk > peak_macs) peak_macs = pk;
    }
    pool_free(peak_pool);
    /* the bandwidths, before any cap: properties of the hardware */
    double mem_bw0, disk_bw0;
    if (measure_bandwidths(ea.dir, threads, &mem_bw0, &disk_bw0, err, sizeof err)) {
        fprintf(stderr, "flashmoe bench: %s\n", err);
        return 1;
    }
    if (cap_mb && apply_cap(cap_mb, cg, sizeof cg, err, sizeof err)) {
        fprintf(stderr, "flashmoe bench: %s\n", err);
        return 1;
    }
    int rc = 1;
    ea.mo.plan_ctx = n_prompt + n_gen + 1;
    model *m = model_load(ea.dir, &ea.mo, err, sizeof err);
    state *s = m ? state_create(m, n_prompt + n_gen + 1, err, sizeof err) : NULL;
    float *logits = m ? malloc(sizeof(float) * (size_t)m->cfg.vocab_size) : NULL;
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    double *pre = calloc((size_t)reps, sizeof(double)), *dec = calloc((size_t)reps, sizeof(double));
    double disk_bytes = 0, expert_bytes = 0, pre_disk_bytes = 0, wasted_experts = 0;
    /* the device's counters over the decode phases (have_dev: the model's directory is on a block device) */
    diskstat_dev dev;
    char dev_err[512];
    int have_dev = diskstat_find("/sys", ea.dir, &dev, dev_err, sizeof dev_err) == 0;
    double dev_busy = 0, dev_bytes = 0, dec_time = 0;
    if (!s || !logits || !prompt || !pre || !dec) {
        fprintf(stderr, "flashmoe bench: %s\n", s ? "out of memory" : err);
        goto out;
    }
    uint64_t x = 12345;
    for (int i = 0; i < n_prompt; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        prompt[i] = (int32_t)(x % (uint64_t)m->cfg.vocab_size);
    }
    experts_stats st0, st1;
    for (int r = 0; r < reps; r++) {
        if (cold) {
            sync();
            FILE *dc = fopen("/proc/sys/vm/drop_caches", "w");
            if (dc) {
                fputs("3\n", dc);
                fclose(dc);
            }
        }
        state_reset(s);
        double io_p = proc_read_bytes(), t0 = util_now_seconds();
        if (model_forward(m, s, prompt, n_prompt, logits, 0, err, sizeof err)) goto fail;
        double t1 = util_now_seconds(), io0 = proc_read_bytes();
        pre_disk_bytes += (io0 - io_p) / n_prompt / reps;
        experts_stats_get(m->experts, &st0);
        diskstat_sample d0, d1;
        if (have_dev && diskstat_read(&dev, &d0, dev_err, sizeof dev_err)) have_dev = 0;
        for (int t = 0; t < n_gen; t++) {
            int32_t best = 0;
            for (int k = 1; k < m->cfg.vocab_size; k++)
                if (logits[k] > logits[best]) best = k;
            if (model_forward(m, s, &best, 1, logits, 0, err, sizeof err)) goto fail;
        }
        double t2 = util_now_seconds();
        experts_stats_get(m->experts, &st1);
        if (have_dev && diskstat_read(&dev, &d1, dev_err, sizeof dev_err)) have_dev = 0;
        if (have_dev) {
            dev_busy += d1.busy_s - d0.busy_s;
            dev_bytes += d1.read_bytes - d0.read_bytes;
        }
        dec_time += t2 - t1;
        pre[r] = n_prompt / (t1 - t0);
        dec[r] = n_gen / (t2 - t1);
        disk_bytes += (proc_read_bytes() - io0) / n_gen / reps;
        expert_bytes += (double)(st1.bytes_read - st0.bytes_read) / n_gen / reps;
        wasted_experts += ((double)(st1.prefetched - st0.prefetched) - (double)(st1.prefetch_used - st0.prefetch_used)) /
                          n_gen / reps;
        if (!json) fprintf(stderr, "bench: rep %d/%d: prefill %.2f tok/s, decode %.2f tok/s\n", r + 1, reps, pre[r], dec[r]);
    }
    if (cg[0]) {
        release_cap(cg, &peak);
        cg[0] = '\0';
    }
    /* The bandwidths again, after the runs and outside the cap: the disk and the host are shared and
     * drift, so the floor takes the better measurement of each (the hardware did at least that well). */
    double mem_bw1, disk_bw1;
    if (measure_bandwidths(ea.dir, threads, &mem_bw1, &disk_bw1, err, sizeof err)) goto fail;
    double mem_bw = mem_bw1 > mem_bw0 ? mem_bw1 : mem_bw0, disk_bw = disk_bw1 > disk_bw0 ? disk_bw1 : disk_bw0;
    double pm, psd, dm, dsd;
    mean_sd(pre, reps, &pm, &psd);
    mean_sd(dec, reps, &dm, &dsd);
    experts_stats st;
    experts_stats_get(m->experts, &st);
    size_t rec = 0;
    packed_manifest man;
    if (packed_is_dir(ea.dir) && packed_manifest_load(&man, ea.dir, err, sizeof err) == 0) rec = man.layout.record_bytes;
    double state_bytes = state_bytes_per_token(m, n_prompt + (n_gen - 1) / 2.0);
    double mem_bytes = dense_bytes_per_token(m) + (double)m->top_k * m->cfg.n_layers * (double)rec + state_bytes;
    /* the floor counts the bytes a token needs: not the reads of wrongly predicted experts (prefetch) */
    double wasted_bytes = wasted_experts > 0 ? wasted_experts * (double)rec : 0;
    double need_bytes = disk_bytes > wasted_bytes ? disk_bytes - wasted_bytes : 0;
    double t_disk = disk_bw > 0 ? need_bytes / disk_bw : 0, t_mem = mem_bw > 0 ? mem_bytes / mem_bw : 0;
    double floor_s = t_disk > t_mem ? t_disk : t_mem, frac = floor_s * dm;
    /* prefill: the larger of its arithmetic over the measured peak and the bytes it read over the disk */
    double pre_macs = prefill_macs_per_token(m, n_prompt);
    double tp_cpu = peak_macs > 0 ? pre_macs / peak_macs : 0, tp_disk = disk_bw > 0 ? pre_disk_bytes / disk_bw : 0;
    double pre_floor = tp_cpu > tp_disk ? tp_cpu : tp_disk, pre_frac = pre_floor * pm;
    uint64_t asked = st.hits + st.misses;
    double hit = asked ? (double)st.hits / asked : 0;
    double pf_hit = st.predicted_asked ? (double)st.predicted_right / st.predicted_asked : 0;
    double pf_top = st.predictions ? (double)st.prediction_top / st.predictions : 0;
    double pf_used = st.prefetched ? (double)st.prefetch_used / st.prefetched : 0;
    /* the device during decoding, when it read anything then */
    int dev_report = have_dev && dev_bytes > 0 && dev_busy > 0 && dec_time > 0;
    double dev_busy_frac = dev_report ? dev_busy / dec_time : 0, dev_rate = dev_report ? dev_bytes / dev_busy : 0;
    if (cg[0]) release_cap(cg, &peak);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", ea.dir);
        cJSON_AddNumberToObject(o, "threads", threads);
        cJSON_AddStringToObject(o, "io", st.mode);
        cJSON_AddNumberToObject(o, "cap_mb", cap_mb);
        cJSON_AddNumberToObject(o, "prompt_tokens", n_prompt);
        cJSON_AddNumberToObject(o, "gen_tokens", n_gen);
        cJSON_AddNumberToObject(o, "reps", reps);
        cJSON_AddNumberToObject(o, "prefill_tok_s", pm);
        cJSON_AddNumberToObject(o, "prefill_tok_s_sd", psd);
        cJSON_AddNumberToObject(o, "decode_tok_s", dm);
        cJSON_AddNumberToObject(o, "decode_tok_s_sd", dsd);
        cJSON_AddNumberToObject(o, "disk_bytes_per_token", disk_bytes);
        cJSON_AddNumberToObject(o, "expert_bytes_read_per_token", expert_bytes);
        cJSON_AddNumberToObject(o, "mem_bytes_per_token", mem_bytes);
        cJSON_AddNumberToObject(o, "state_bytes_per_token", state_bytes);
        cJSON_AddNumberToObject(o, "disk_bw", disk_bw);
        cJSON_AddNumberToObject(o, "disk_bw_before", disk_bw0);
        cJSON_AddNumberToObject(o, "disk_bw_after", disk_bw1);
        cJSON_AddNumberToObject(o, "mem_bw_before", mem_bw0);
        cJSON_AddNumberToObject(o, "mem_bw_after", mem_bw1);
        cJSON_AddNumberToObject(o, "mem_bw", mem_bw);
        cJSON_AddNumberToObject(o, "floor_decode_tok_s", floor_s > 0 ? 1 / floor_s : 0);
        cJSON_AddNumberToObject(o, "fraction_of_floor", frac);
        cJSON_AddNumberToObject(o, "cache_hit_rate", hit);
        cJSON_AddNumberToObject(o, "prefetch_wasted_bytes_per_token", wasted_bytes);
        cJSON_AddNumberToObject(o, "prefetch_prediction_hit_rate", pf_hit);
        cJSON_AddNumberToObject(o, "prefetch_top_read", pf_top);
        cJSON_AddNumberToObject(o, "prefetch_used_rate", pf_used);
        if (dev_report) {
            cJSON_AddNumberToObject(o, "decode_disk_busy_fraction", dev_busy_frac);
            cJSON_AddNumberToObject(o, "decode_disk_busy_bw", dev_rate);
        }
        cJSON_AddNumberToObject(o, "prefill_macs_per_token", pre_macs);
        cJSON_AddNumberToObject(o, "peak_macs_per_s", peak_macs);
        cJSON_AddStringToObject(o, "peak_kind", kernel_peak_name());
        cJSON_AddNumberToObject(o, "prefill_disk_bytes_per_token", pre_disk_bytes);
        cJSON_AddNumberToObject(o, "floor_prefill_tok_s", pre_floor > 0 ? 1 / pre_floor : 0);
        cJSON_AddNumberToObject(o, "prefill_fraction_of_floor", pre_frac);
        cJSON_AddNumberToObject(o, "peak_cgroup_bytes", peak);
        cJSON_AddNumberToObject(o, "expert_source_memory_bytes", (double)st.memory_bytes); /* buffers and cache */
        cJSON_AddNumberToObject(o, "experts_read_ahead", (double)st.read_ahead);
        if (m->io_note[0]) cJSON_AddStringToObject(o, "io_note", m->io_note);
        char *text = cJSON_PrintUnformatted(o);
        printf("%s\n", text);
        free(text);
        cJSON_Delete(o);
    } else {
        printf("model %s, threads %d, --io %s%s%s\n", ea.dir, threads, st.mode,
               cap_mb ? ", cap " : "", cap_mb ? "on" : "");
        if (m->io_note[0]) printf("%s\n", m->io_note);
        printf("prefill  %6d tokens: %8.2f ± %.2f tok/s (chunks of %d)\n", n_prompt, pm, psd,
               n_prompt < m->prefill_chunk ? n_prompt : m->prefill_chunk);
        printf("decode   %6d tokens: %8.2f ± %.2f tok/s\n", n_gen, dm, dsd);
        printf("per token: %.1f MB from disk (block reads; %.1f MB of experts read), %.1f MB from memory (%.1f MB "
               "of it recurrent state and KV cache)\n",
               disk_bytes / 1e6, expert_bytes / 1e6, mem_bytes / 1e6, state_bytes / 1e6);
        printf("measured: disk %.2f GB/s (random O_DIRECT expert records; %.2f before the runs, %.2f after), "
               "memory %.2f GB/s (%d threads; %.2f before, %.2f after)\n",
               disk_bw / 1e9, disk_bw0 / 1e9, disk_bw1 / 1e9, mem_bw / 1e9, threads,
               mem_bw0 / 1e9, mem_bw1 / 1e9);
        if (st.predictions)
            printf("prefetch: next-layer prediction hit rate %.1f%%, top %.1f of each read, %.1f%% of the experts "
                   "read ahead used (%.1f MB per token wasted, left out of the floor)\n",
                   100 * pf_hit, pf_top, 100 * pf_used, wasted_bytes / 1e6);
        printf("decode floor: %.2f tok/s (disk %.1f ms, memory %.1f ms per token); achieved %.0f%% of the floor\n",
               floor_s > 0 ? 1 / floor_s : 0, 1e3 * t_disk, 1e3 * t_mem, 100 * frac);
        if (dev_report)
            printf("disk while decoding: a read in flight %.0f%% of the time, %.2f GB/s while one was (the device's "
                   "counters: %s, other processes' reads included)\n",
                   100 * dev_busy_frac, dev_rate / 1e9, dev.stat_path);
        printf("prefill floor: %.2f tok/s (compute %.2f G multiply-adds per token at a measured %.1f G/s %s "
               "peak: %.1f ms; disk %.1f MB per token: %.1f ms); achieved %.0f%% of the floor\n",
               pre_floor > 0 ? 1 / pre_floor : 0, pre_macs / 1e9, peak_macs / 1e9, kernel_peak_name(), 1e3 * tp_cpu, pre_disk_bytes / 1e6,
               1e3 * tp_disk, 100 * pre_frac);
        /* above 100%: the term that set the floor was measured below what the run reached */
        if ((frac > 1 && t_disk >= t_mem) || (pre_frac > 1 && tp_disk >= tp_cpu))
            printf("note: above 100%% of a floor: this run read from disk faster than the measured random-record "
                   "bandwidth (page-cache readahead), so that floor does not bound it\n");
        if (frac > 1 && t_mem > t_disk)
            printf("note: decode above 100%% of its memory floor: the measured memory bandwidth understates what "
                   "this run reached, so that floor does not bound it\n");
        if (pre_frac > 1 && tp_cpu > tp_disk)
            printf("note: prefill above 100%% of its arithmetic floor: the measured peak understates what this "
                   "run reached, so that floor does not bound it\n");
        printf("expert cache hit rate %.1f%%", 100 * hit);
        if (st.read_ahead) /* hits that are not reuse: prompt chunks' experts read during their mixer */
            printf(" (the hits include prompt chunks' experts: %llu read ahead)", (unsigned long long)st.read_ahead);
        printf("%s", cap_mb ? "" : "\n");
        if (cap_mb) printf(", peak memory %.0f MiB of the %d MiB cap\n", peak / 1048576, cap_mb);
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "flashmoe bench: %s\n", err);
out:
    if (cg[0]) release_cap(cg, &peak);
    free(pre);
    free(dec);
    free(prompt);
    free(logits);
    state_free(s);
    model_free(m);
    return rc;
}
