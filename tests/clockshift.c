/* A wrong wall clock for one process: LD_PRELOAD this and set CLOCKSHIFT_FILE to a file that
 * holds an offset in seconds (a decimal number, may be negative). clock_gettime() for
 * CLOCK_REALTIME, CLOCK_REALTIME_COARSE and CLOCK_TAI, gettimeofday() and time() return the
 * real time plus that offset; CLOCK_MONOTONIC and CLOCK_BOOTTIME (and every other clock) are
 * left alone, so sleeps, timeouts and asyncio keep working (libfaketime 0.9.10 breaks Python
 * 3.11's time.sleep() when it leaves the monotonic clock real). The file is read again at most
 * every 50 ms of monotonic time, so rewriting it makes the clock jump in a running process.
 * Built at test time by tests/clockshift.py. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static char shift_path[4096];
static int64_t offset_ns;       /* read and written with __atomic builtins */
static int64_t next_read_ns;    /* monotonic time of the next look at the file */

static clock_gettime_fn real(void) {
    clock_gettime_fn fn = __atomic_load_n(&real_clock_gettime, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        __atomic_store_n(&real_clock_gettime, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

__attribute__((constructor)) static void clockshift_init(void) {
    const char *path = getenv("CLOCKSHIFT_FILE");
    if (path != NULL && strlen(path) < sizeof shift_path)
        strcpy(shift_path, path);
    real();
}

static int64_t offset(void) {
    struct timespec mono;
    if (shift_path[0] == '\0' || real()(CLOCK_MONOTONIC, &mono) != 0)
        return __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
    int64_t now = (int64_t)mono.tv_sec * 1000000000 + mono.tv_nsec;
    if (now >= __atomic_load_n(&next_read_ns, __ATOMIC_RELAXED)) {
        __atomic_store_n(&next_read_ns, now + 50000000, __ATOMIC_RELAXED);
        int fd = open(shift_path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char text[64];
            ssize_t n = read(fd, text, sizeof text - 1);
            close(fd);
            if (n > 0) {
                text[n] = '\0';
                char *end;
                double seconds = strtod(text, &end);
                if (end != text)
                    __atomic_store_n(&offset_ns, (int64_t)(seconds * 1e9), __ATOMIC_RELAXED);
            }
        }
    }
    return __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
}

static void shift(struct timespec *ts) {
    int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + offset();
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) {
        rem += 1000000000;
        sec -= 1;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)rem;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int rc = real()(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE || clock == CLOCK_TAI))
        shift(ts);
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    tv->tv_sec = ts.tv_sec; /* glibc declares tv nonnull */
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out != NULL)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
