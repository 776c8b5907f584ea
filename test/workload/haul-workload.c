/*
 * haul-workload: the process every haul test and benchmark migrates.
 *
 *   haul-workload run    --dir DIR [--mib N] [--touch PERCENT]
 *                                              hold N MiB of patterned memory, beat every 10 ms
 *   haul-workload start  --dir DIR [--mib N] [--touch PERCENT]
 *                                              the same, detached into its own session; returns
 *                                              once the memory is filled, printing the pid
 *   haul-workload report --dir DIR [--since REALTIME_NS] [--timeout S] [--arm-touch]
 *                                              ask the running workload for a report (below)
 *   haul-workload checksum [--mib N]           the checksum an intact N MiB workload reports
 *
 * Every 10 ms it writes DIR/beat = "<tick> <CLOCK_MONOTONIC ns> <CLOCK_REALTIME ns>" (atomically, by
 * rename) and keeps the beat in an in-memory ring. The ring travels with the process through a
 * checkpoint, so the largest gap between beats is the downtime the process itself saw, whatever
 * happened to files on the way. Gaps are measured on CLOCK_REALTIME: CRIU restores a container
 * into a new time namespace whose CLOCK_MONOTONIC offset hides most of the time it was frozen.
 *
 * A report is requested through DIR/request (no signals, no pids: the workload may live in another
 * pid namespace than the asker). It answers in DIR/report:
 *   nonce, pid, mib, checksum (of the patterned memory), tick, mono_ns, real_ns,
 *   window_beats, max_gap_ns, max_gap_end_tick, max_gap_end_real_ns (when the process ran again
 *   after that gap)  (over the beats since --since, default all kept).
 * The memory is written once, page by page from a generator seeded by the page number, and never
 * changed, so its checksum depends on N alone and proves every page came back intact.
 *
 * With --touch, once armed (`report --arm-touch`, just before the migration, so that a stall of
 * the machine before it does not count), the first freeze the workload notices (beats more than
 * 50 ms apart: a checkpoint and restore) makes it read one word of PERCENT% of its pages, spread
 * evenly, at once, and time each read: after a lazy restore, that is the page-fault service time a
 * workload sees. The beat goes on between reads. The report adds touch_pages (0 until done),
 * touch_p50_ns, touch_p99_ns, touch_max_ns, touch_ns (the whole pass), touch_freeze_ns (the gap
 * that started it: the freeze alone, where max_gap_ns may be a read that waited longer) and
 * touch_started_real_ns (CLOCK_REALTIME of the first beat after the freeze).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/close_range.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define BEAT_NS 10000000ULL
#define RING (1u << 17) /* beats kept: about 21 minutes */
#define FREEZE_NS 50000000ULL /* a gap between beats this long was a freeze: 5 beats missed */

struct beat { uint64_t tick, real_ns; };

static uint64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void fill_page(uint64_t *page, uint64_t index) {
    uint64_t s = splitmix64(index + 1);
    for (size_t i = 0; i < PAGE / 8; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        page[i] = s;
    }
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t hash_words(uint64_t h, const uint64_t *w, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ w[i]) * 0x100000001b3ULL;
    return h;
}

#define HASH_SEED 0xcbf29ce484222325ULL

static void die(const char *what) {
    fprintf(stderr, "haul-workload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr,
            "usage: haul-workload run|start --dir DIR [--mib N] [--touch PERCENT]\n"
            "       haul-workload report --dir DIR [--since REALTIME_NS] [--timeout SECONDS] [--arm-touch]\n"
            "       haul-workload checksum [--mib N]\n");
    exit(2);
}

struct options { const char *dir; long mib; uint64_t since; double timeout; long touch; int arm_touch; };

static struct options parse(int argc, char **argv) {
    struct options o = { NULL, 1, 0, 10, 0, 0 };
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--arm-touch")) { o.arm_touch = 1; continue; }
        if (i + 1 >= argc) usage();
        char *end;
        if (!strcmp(argv[i], "--dir")) o.dir = argv[++i];
        else if (!strcmp(argv[i], "--mib")) {
            o.mib = strtol(argv[++i], &end, 10);
            if (*end || o.mib < 0 || o.mib > (1L << 20)) usage();
        } else if (!strcmp(argv[i], "--since")) {
            o.since = strtoull(argv[++i], &end, 10);
            if (*end) usage();
        } else if (!strcmp(argv[i], "--touch")) {
            o.touch = strtol(argv[++i], &end, 10);
            if (*end || o.touch < 1 || o.touch > 100) usage();
        } else if (!strcmp(argv[i], "--timeout")) {
            o.timeout = strtod(argv[++i], &end);
            if (*end || o.timeout <= 0) usage();
        } else usage();
    }
    return o;
}

static void path_in(char *out, size_t size, const char *dir, const char *name) {
    if ((size_t)snprintf(out, size, "%s/%s", dir, name) >= size) {
        fprintf(stderr, "haul-workload: path too long: %s/%s\n", dir, name);
        exit(2);
    }
}

/*
 * Writes DIR/NAME whole, by rename. In a test the copy a migration restores may share DIR with the
 * source, both frozen at the same point of this function: the one that runs first renames the
 * temporary file away, and the other's rename then finds none. That is not a failure of the
 * write: it is written again, whole (the other copy is held stopped by then, or gone).
 */
static int write_atomically(const char *dir, const char *name, const char *text) {
    char tmp[4096], final[4096];
    path_in(tmp, sizeof tmp, dir, ".tmp");
    path_in(final, sizeof final, dir, name);
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) return -1;
        size_t len = strlen(text);
        int ok = write(fd, text, len) == (ssize_t)len;
        close(fd);
        if (!ok) return -1;
        if (rename(tmp, final) == 0) return 0;
        if (errno != ENOENT) return -1;
    }
    return -1;
}

static uint64_t memory_checksum(const uint64_t *mem, size_t pages) {
    return hash_words(HASH_SEED, mem, pages * (PAGE / 8));
}

/* What the touch pass after the first freeze measured (all 0 until it is done). */
struct touch_stats { int armed; uint64_t pages, p50_ns, p99_ns, max_ns, total_ns, freeze_ns, started_real_ns; };

static void answer_request(const char *dir, const struct options *o, const uint64_t *mem, size_t pages,
                           const struct beat *ring, uint64_t ticks, struct touch_stats *touch) {
    char path[4096], request[128] = "";
    path_in(path, sizeof path, dir, "request");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, request, sizeof request - 1);
    close(fd);
    unlink(path);
    if (n <= 0) return;
    request[n] = 0;
    char nonce[64] = "", arm[8] = "";
    unsigned long long since = 0;
    if (sscanf(request, "%63s %llu %7s", nonce, &since, arm) < 1) return;
    if (!strcmp(arm, "arm")) touch->armed = 1;

    uint64_t kept = ticks < RING ? ticks : RING, window = 0, max_gap = 0, gap_end = 0, gap_end_real = 0, prev = 0;
    for (uint64_t t = ticks - kept + 1; t <= ticks; t++) {
        const struct beat *b = &ring[t % RING];
        if (b->real_ns >= since) {
            window++;
            if (prev && b->real_ns > prev && b->real_ns - prev > max_gap) { max_gap = b->real_ns - prev; gap_end = b->tick; gap_end_real = b->real_ns; }
        }
        prev = b->real_ns;
    }
    char text[1024];
    snprintf(text, sizeof text,
             "nonce %s\npid %d\nmib %ld\nchecksum %016" PRIx64 "\ntick %" PRIu64 "\nmono_ns %" PRIu64
             "\nreal_ns %" PRIu64 "\nwindow_beats %" PRIu64 "\nmax_gap_ns %" PRIu64 "\nmax_gap_end_tick %" PRIu64
             "\nmax_gap_end_real_ns %" PRIu64 "\ntouch_pages %" PRIu64 "\ntouch_p50_ns %" PRIu64 "\ntouch_p99_ns %" PRIu64 "\ntouch_max_ns %" PRIu64
             "\ntouch_ns %" PRIu64 "\ntouch_freeze_ns %" PRIu64 "\ntouch_started_real_ns %" PRIu64 "\n",
             nonce, getpid(), o->mib, memory_checksum(mem, pages), ticks, now_ns(CLOCK_MONOTONIC),
             now_ns(CLOCK_REALTIME), window, max_gap, gap_end, gap_end_real, touch->pages, touch->p50_ns, touch->p99_ns,
             touch->max_ns, touch->total_ns, touch->freeze_ns, touch->started_real_ns);
    write_atomically(dir, "report", text);
}

static void beat(const char *dir, struct beat *ring, uint64_t tick) {
    char text[128];
    uint64_t mono = now_ns(CLOCK_MONOTONIC), real = now_ns(CLOCK_REALTIME);
    ring[tick % RING] = (struct beat){ tick, real };
    snprintf(text, sizeof text, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", tick, mono, real);
    if (write_atomically(dir, "beat", text) < 0) die("write beat");
}

/*
 * Reads one word of every (100 / percent)-th page, timing each read, beating on the way; the
 * latencies go to memory mapped now, after the restore, which no lazy restore has to bring over.
 */
static void touch_pass(const struct options *o, const volatile uint64_t *mem, size_t pages, struct beat *ring,
                       uint64_t *tick, struct touch_stats *stats) {
    size_t stride = (size_t)(100 / o->touch), count = (pages + stride - 1) / stride;
    if (!count) return;
    uint64_t *latency = mmap(NULL, count * sizeof *latency, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (latency == MAP_FAILED) die("mmap");
    uint64_t started = now_ns(CLOCK_MONOTONIC), next_beat = started + BEAT_NS, sink = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t before = now_ns(CLOCK_MONOTONIC);
        sink += mem[i * stride * (PAGE / 8)];
        uint64_t after = now_ns(CLOCK_MONOTONIC);
        latency[i] = after - before;
        if (after >= next_beat) {
            beat(o->dir, ring, ++*tick);
            next_beat = after + BEAT_NS;
        }
    }
    stats->total_ns = now_ns(CLOCK_MONOTONIC) - started;
    qsort(latency, count, sizeof *latency, compare_u64);
    stats->p50_ns = latency[count / 2];
    stats->p99_ns = latency[(count * 99) / 100 < count ? (count * 99) / 100 : count - 1];
    stats->max_ns = latency[count - 1] + (sink & 0); /* sink keeps the reads */
    stats->pages = count;
    munmap(latency, count * sizeof *latency);
}

static _Noreturn void run(const struct options *o, int ready_fd) {
    if (mkdir(o->dir, 0755) < 0 && errno != EEXIST) die(o->dir);
    size_t pages = (size_t)o->mib * (1024 * 1024 / PAGE);
    uint64_t *mem = NULL;
    if (pages) {
        mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) die("mmap");
        for (size_t p = 0; p < pages; p++) fill_page(mem + p * (PAGE / 8), p);
    }
    struct beat *ring = calloc(RING, sizeof *ring);
    if (!ring) die("calloc");
    char text[128];
    snprintf(text, sizeof text, "%d\n", getpid());
    if (write_atomically(o->dir, "pid", text) < 0) die("write pid");

    struct touch_stats touch = { 0 };
    int touched = 0;
    uint64_t next = now_ns(CLOCK_MONOTONIC), last_real = 0;
    for (uint64_t tick = 1;; tick++) {
        beat(o->dir, ring, tick);
        uint64_t real = ring[tick % RING].real_ns;
        if (o->touch && touch.armed && !touched && last_real && real - last_real > FREEZE_NS) {
            touched = 1;
            touch.freeze_ns = real - last_real;
            touch.started_real_ns = real;
            touch_pass(o, mem, pages, ring, &tick, &touch);
            real = ring[tick % RING].real_ns;
        }
        last_real = real;
        if (ready_fd >= 0) {
            /* the starter only waits for this; the pipe must not be open at checkpoint time */
            if (write(ready_fd, "ok\n", 3) != 3) {}
            close(ready_fd);
            ready_fd = -1;
        }
        answer_request(o->dir, o, mem, pages, ring, tick, &touch);
        next += BEAT_NS;
        uint64_t mono = now_ns(CLOCK_MONOTONIC);
        if (next < mono) next = mono + BEAT_NS; /* after a freeze: carry on, do not catch up */
        struct timespec ts = { (time_t)(next / 1000000000ULL), (long)(next % 1000000000ULL) };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
    }
}

static int start(const struct options *o) {
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        close(ready[0]);
        setsid();
        if (chdir("/") < 0) die("chdir");
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); if (null > 2) close(null); }
        /* whatever else the starter had open (a shell's fds, files of another mount namespace)
         * must not be checkpointed with the workload */
        int keep = ready[1];
        if (keep > 3) close_range(3, keep - 1, 0);
        close_range(keep + 1, ~0U, 0);
        run(o, keep);
    }
    close(ready[1]);
    char buf[8] = "";
    ssize_t n = read(ready[0], buf, sizeof buf);
    if (n != 3) {
        int status = 0;
        waitpid(pid, &status, WNOHANG);
        fprintf(stderr, "haul-workload: the workload (pid %d) exited before its first beat\n", pid);
        return 1;
    }
    printf("%d\n", pid);
    return 0;
}

static int report(const struct options *o) {
    char nonce[64], request[128], path[4096];
    snprintf(nonce, sizeof nonce, "%d-%" PRIu64, getpid(), now_ns(CLOCK_MONOTONIC));
    snprintf(request, sizeof request, "%s %" PRIu64 "%s\n", nonce, o->since, o->arm_touch ? " arm" : "");
    char tmp[4096], final[4096];
    path_in(tmp, sizeof tmp, o->dir, ".request.tmp");
    path_in(final, sizeof final, o->dir, "request");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die(tmp);
    if (write(fd, request, strlen(request)) != (ssize_t)strlen(request)) die("write request");
    close(fd);
    if (rename(tmp, final) < 0) die("rename request");

    path_in(path, sizeof path, o->dir, "report");
    uint64_t deadline = now_ns(CLOCK_MONOTONIC) + (uint64_t)(o->timeout * 1e9);
    char text[1024], want[80];
    snprintf(want, sizeof want, "nonce %s\n", nonce);
    while (now_ns(CLOCK_MONOTONIC) < deadline) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, text, sizeof text - 1);
            close(fd);
            if (n > 0) {
                text[n] = 0;
                if (!strncmp(text, want, strlen(want))) { fputs(text, stdout); return 0; }
            }
        }
        usleep(5000);
    }
    unlink(final);
    fprintf(stderr, "haul-workload: no report from the workload in %s within %.1f s (is it running?)\n",
            o->dir, o->timeout);
    return 1;
}

static int checksum(const struct options *o) {
    uint64_t page[PAGE / 8], h = HASH_SEED;
    size_t pages = (size_t)o->mib * (1024 * 1024 / PAGE);
    for (size_t p = 0; p < pages; p++) {
        fill_page(page, p);
        h = hash_words(h, page, PAGE / 8);
    }
    printf("%016" PRIx64 "\n", h);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    struct options o = parse(argc, argv);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "checksum")) return checksum(&o);
    if (!o.dir) usage();
    if (!strcmp(cmd, "run")) run(&o, -1);
    if (!strcmp(cmd, "start")) return start(&o);
    if (!strcmp(cmd, "report")) return report(&o);
    usage();
}
