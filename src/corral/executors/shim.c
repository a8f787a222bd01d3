/*
 * corral-shim: a tiny per-workload watcher (like conmon or containerd-shim). It runs
 * one workload, outlives the corral server, and records how the workload ended. The
 * same binary run as `corral-shim --launcher` forks shims on request (see the end of
 * this file); a forked shim behaves exactly as an exec'd one.
 *
 *   corral-shim STATE GRACE_SECONDS CWD -- PROGRAM [ARG...]
 *
 * Protocol with the server:
 *   - The server starts the shim as a session leader (setsid), stdin /dev/null, stdout
 *     and stderr on the workload's log file. The shim's environment is the workload's,
 *     passed unchanged (PROGRAM is looked up in its PATH). The shim closes every other
 *     descriptor it inherited and sets every signal to its default disposition.
 *   - The shim is a child subreaper: orphaned descendants of the workload become its
 *     children and it reaps them. The workload runs in its own process group, whose id
 *     is the workload's pid, in CWD (or in the shim's directory when CWD is "").
 *   - STATE.pid         "<workload pid>\n", written right after the fork and before
 *                       the workload may exec (STATE is a path prefix, e.g.
 *                       DATA/run/<workload id>). So neither STATE.pid nor a live shim
 *                       means the command never ran: a restarted server may start it.
 *   - The status        written exactly once, as the shim's last act: appended to
 *                       STATE.pid as its second line (one write(2) of the line, with
 *                       O_APPEND), else, where there is no STATE.pid of this shim or
 *                       the append fails, to STATE.status. A reader takes the second
 *                       line of STATE.pid only once it ends in "\n" (a partial append
 *                       is followed by STATE.status), and STATE.status otherwise:
 *                       shims of corral before 2026-12-01 write only STATE.status.
 *                       A shim that did not write STATE.pid removes any there (left
 *                       by an earlier run on the same STATE) before STATE.status.
 *                       (One file per workload instead of two: on ext4 each file
 *                       created scans past every inode freed in its group in the last
 *                       60-360 s, "recently_deleted" in the kernel's inode allocator,
 *                       and the server frees each workload's state files once it has
 *                       recorded the end: docs/benchmarks.md.) The line:
 *                         "exit N\n"    the workload exited with code N
 *                         "signal N\n"  the workload was killed by signal N
 *                         "spawn E\n"   never started: pipe, fork, the change of user
 *                                       or exec failed, or STATE.pid could not be
 *                                       written, errno E
 *                         "chdir E\n"   never started: chdir to CWD failed, errno E
 *     When it appears the workload has exited and its log holds all its output, and the
 *     workload's process group is empty (unless members survived SIGKILL for 2 s).
 *     A status that cannot be written (a full disk) is retried, after 50 ms doubling up
 *     to every second, until it is; the shim says so once in the log and lives on
 *     meanwhile, so a live shim with its workload gone means "finished, not recorded
 *     yet", never "lost". A failed STATE.pid is not retried: the command never runs.
 *   - STATE.pid and STATE.status are written to NAME.tmp (mode 0600, whatever the
 *     umask) then renamed: readers never see partial files (the appended status line
 *     is read only whole, as above).
 *   - SIGTERM, SIGINT or SIGHUP to the shim: SIGTERM (and SIGCONT) to the workload's
 *     group, then SIGKILL after GRACE_SECONDS if anything is left in it. Processes left
 *     in the group after the workload itself exits are treated the same way.
 *   - CORRAL_SHIM_NOFILE=N in the environment: the workload's soft open-files limit
 *     (lowered to N; the variable is removed before the workload starts).
 *   - CORRAL_SHIM_UMASK=OCTAL: the workload's umask (the shim keeps its own, the
 *     server's 077: STATE files are 0600 in any case). Removed before the workload
 *     starts; a value that is not an octal number up to 0777 is "spawn 22" (EINVAL).
 *   - CORRAL_SHIM_UID=N, CORRAL_SHIM_GID=N, CORRAL_SHIM_GROUPS=G1,G2,... (all three or
 *     none; GROUPS may be empty): run the workload as that user. The shim stays root, so
 *     its kills reach the group; the child calls setgroups, setgid, setuid (in that
 *     order, each checked) before chdir and exec, so the user's permissions apply to
 *     CWD and PROGRAM. A failure is "spawn E"; values that cannot be read (or one
 *     variable without the others) are "spawn 22" and run nothing. Removed before the
 *     workload starts, like the others.
 *   - CORRAL_SHIM_WATCH_PID=N: stop the workload when process N exits (the corral
 *     agent of a Ray node: no workload outlives it). The shim opens a pidfd for N
 *     before it forks; if N is gone by then (a zombie counts as gone) the command
 *     never runs: "spawn 3" (ESRCH), as for any pidfd that cannot be opened ("spawn
 *     E"). While the workload runs the shim checks the pidfd every 0.5 s (WATCH_TICK_NS)
 *     and, once N has exited, acts as on SIGTERM. A value that is not a positive
 *     number is "spawn 22". Removed before the workload starts, like the others.
 *     Without it the shim wakes only for signals.
 *   - CORRAL_SHIM_ENV_NAME=VALUE: the workload's NAME=VALUE, hidden from the shim's own
 *     start (the server exec's a shim with LD_PRELOAD, LD_LIBRARY_PATH, GCONV_PATH…
 *     renamed so, or a dynamically linked shim, which stays root, would load what a
 *     user named). The shim renames them back before the workload starts.
 *   - CORRAL_SHIM_LOG_CAP=N and CORRAL_SHIM_LOG=PATH (PATH: the log's path, the file
 *     stdout is open on): cap the log at N bytes (0: no cap, as without them). The
 *     workload's stdout and stderr are then one pipe (so their writes stay in the order
 *     made, as on the log file), which the shim copies: the first N/2 bytes to the log,
 *     the last N-N/2 to a ring file PATH.ring, and at the end a log of the head, one
 *     line "[corral: D bytes dropped]\n" (preceded by "\n" when the head does not end
 *     a line) when D bytes were dropped, and the tail. While it runs the log holds the
 *     head only and never grows past it; the ring is at most 128 + N - N/2 bytes.
 *       PATH.ring: bytes 0-63 "corral-log-ring 1 HEAD_END SIZE" (HEAD_END: the log's
 *       size when the head was full; SIZE: N-N/2), written once, before the ring is
 *       renamed into place (from PATH.ring.tmp); bytes 64-127 "LO HI SEALED CHECK"
 *       (%020llu %020llu %d %016llx, space-padded), the state: the tail holds the
 *       output's bytes LO..HI counted from the head's end (so LO were dropped), byte I
 *       of them at offset 128 + I % SIZE; CHECK is FNV-1a 64 of the first 43 bytes (a
 *       reader takes a record whose check fails for a torn read, and reads it again).
 *       A write first raises LO (the bytes about to be overwritten are no longer
 *       kept), then writes the bytes, then raises HI; so a reader that read HI,
 *       then bytes from I, then the record again, has good bytes when I >= LO still.
 *       A write that fails drops what the tail held (LO = HI).
 *     At the end (the workload's group gone, the pipe drained: bytes written later by
 *     processes that left the group are lost) the shim seals the ring (SEALED 1: it
 *     never changes again), appends marker and tail to the log (whose every size is
 *     so a prefix of the final log), and removes the ring, all before the status.
 *     A ring that cannot be made (a full disk) keeps no tail: the rest is counted as
 *     dropped, and the marker is appended with a line saying why. A log that cannot
 *     be finished is cut back to its head beside the sealed ring (readers join them;
 *     the server finishes it later: corral/logs.py). A bad or lone value of either
 *     variable is "spawn 22".
 *     Removed before the workload starts, like the others.
 *   - Exit code: 0 once status is written, 1 if its path is too long for the system
 *     (it never could be), 2 on bad arguments.
 *
 * Processes that leave the group (setsid, setpgid) are not tracked.
 * Build: cc -O2 -s -static -o corral-shim shim.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK 0.1       /* seconds between checks while stopping a group (members can
                          leave it without a signal to the shim); none while running,
                          but WATCH_TICK_NS with CORRAL_SHIM_WATCH_PID */
#define GIVE_UP 2.0    /* seconds to wait for the group to empty after SIGKILL */
#define WATCH_TICK_NS 500000000L /* between checks of a watched process (0.5 s) */

static const char *state_dir;
static int capping; /* the log is capped, and its output goes through cap_write() */
static void cap_write(const char *buf, size_t n);

/* Writes "corral-shim: <a><b>\n" to stderr (the workload's log), unbuffered. */
static void say(const char *a, const char *b)
{
    char msg[512];
    int n = snprintf(msg, sizeof msg, "corral-shim: %s%s\n", a, b);
    if (n < 0)
        return;
    if (n > (int)sizeof msg - 1)
        n = (int)sizeof msg - 1;
    if (capping) {
        cap_write(msg, (size_t)n);
        return;
    }
    ssize_t w = write(STDERR_FILENO, msg, (size_t)n);
    (void)w;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes "corral-shim: cannot write PATH: <strerror(E)>TAIL" to the log. */
static void say_cannot_write(const char *path, int e, const char *tail)
{
    char what[4200];
    snprintf(what, sizeof what, "%s: %s%s", path, strerror(e), tail);
    say("cannot write ", what);
}

static char state_path[4096], state_tmp[4096]; /* of the last write_state() */

/* Atomically sets STATE.NAME to LINE: writes NAME.tmp, then renames it. Returns -1
 * with errno set on failure (state_path names the file), having said nothing and
 * removed NAME.tmp. Allocates nothing, so it can be retried forever. */
static int write_state(const char *name, const char *line)
{
    if (snprintf(state_path, sizeof state_path, "%s.%s", state_dir, name) >=
            (int)sizeof state_path ||
        snprintf(state_tmp, sizeof state_tmp, "%s.tmp", state_path) >= (int)sizeof state_tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(state_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = strlen(line);
    ssize_t w = write(fd, line, len);
    int ok = w == (ssize_t)len;
    int e = ok ? 0 : (w < 0 ? errno : ENOSPC); /* a short write: the disk is full */
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok && rename(state_tmp, state_path) < 0) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(state_tmp);
        errno = e;
        return -1;
    }
    return 0;
}

static int pid_written; /* this shim wrote STATE.pid: the status is appended to it */

/* Appends LINE to STATE.pid with one write: 0 when all of it is there, else -1 (what
 * was written of it, if anything, is a last line without "\n", which readers skip;
 * after a failed close it may be whole: STATE.status then says the same, and may be
 * left behind by a server that read the pid file's line). */
static int append_status(const char *line)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s.pid", state_dir) >= (int)sizeof path)
        return -1;
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    size_t len = strlen(line);
    ssize_t w = write(fd, line, len);
    int closed = close(fd); /* (a network file system may say only here that it failed) */
    return w == (ssize_t)len && closed == 0 ? 0 : -1;
}

#define RETRY_FIRST_MS 50 /* the status write is retried after 50 ms, then doubling... */
#define RETRY_MAX_MS 1000 /* ...up to once a second, for as long as it fails */

/* Writes the final status "WORD N" (appended to STATE.pid, else STATE.status: see the
 * protocol above) and returns the shim's exit code. A write of STATE.status
 * that fails (a full disk, a quota, a missing directory) is retried until it succeeds,
 * saying why once: a workload that ended must not be taken for lost because the disk
 * was full for a while. Only a state path too long for the system gives up (exit 1).
 * Orphans adopted meanwhile are reaped; kill requests stay blocked (the group is
 * gone). Nothing is allocated, so a shim that waits for days costs no more. */
static int finish(const char *word, int n)
{
    char line[64];
    snprintf(line, sizeof line, "%s %d\n", word, n);
    if (pid_written && append_status(line) == 0)
        return 0;
    if (!pid_written && snprintf(state_path, sizeof state_path, "%s.pid", state_dir) <
                            (int)sizeof state_path)
        unlink(state_path); /* not ours (a run before on this STATE): its status is not this one */
    long delay_ms = RETRY_FIRST_MS;
    int said = 0;
    while (write_state("status", line) < 0) {
        int e = errno;
        if (e == ENAMETOOLONG) {
            say_cannot_write(state_path, e, "");
            return 1;
        }
        if (!said) {
            say_cannot_write(state_path, e, " (retrying until it can)");
            said = 1;
        }
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
        delay_ms = delay_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : delay_ms * 2;
    }
    if (said)
        say("wrote ", state_path);
    return 0;
}

/* Reaps every exited child (the workload and adopted orphans) without blocking. */
static void reap_all(pid_t child, int *status, int *reaped)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
        if (p == child) {
            *status = st;
            *reaped = 1;
        }
    }
}

/* Asks every process of the workload's group to terminate. */
static void stop_group(pid_t pgid)
{
    killpg(pgid, SIGTERM);
    killpg(pgid, SIGCONT); /* a stopped process must run to act on SIGTERM */
}

/* True once the process of PIDFD has exited (a zombie included): it is readable. */
static int watched_gone(int pidfd)
{
    struct pollfd p = {pidfd, POLLIN, 0};
    int r;
    do
        r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

/* --- the log cap (CORRAL_SHIM_LOG_CAP; the protocol is at the top) ------------------- */

#define RING_RECORD 64 /* the offset of the ring's state record, and each line's length */
#define RING_DATA 128  /* the offset of the ring's bytes */

static const char *log_path;                /* CORRAL_SHIM_LOG */
static unsigned long long head_left;        /* bytes the head still takes */
static unsigned long long ring_size;        /* N - N/2 */
static unsigned long long ring_lo, ring_hi; /* the tail: output bytes LO..HI after the head */
static unsigned long long head_end;         /* the log's size once the head was full */
static int in_tail;                         /* the head is full: the rest goes to the ring */
static int ring_fd = -1;
static int ring_error;                      /* why there is no ring (an errno), or 0 */
static char head_last = '\n';               /* the head's last byte ('\n' for none) */
static int out_fd = -1;                     /* the read end of the workload's output pipe */
static int sig_fd = -1;                     /* the blocked signals, to poll with out_fd */
static char out_buf[65536];

static int write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int pwrite_all(int fd, const char *buf, size_t n, unsigned long long at)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, buf, n, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
        at += (unsigned long long)w;
    }
    return 0;
}

/* Copies LEN bytes of FROM at offset AT to the end of TO. */
static int copy_range(int from, unsigned long long at, unsigned long long len, int to)
{
    while (len > 0) {
        size_t want = len < sizeof out_buf ? (size_t)len : sizeof out_buf;
        ssize_t r = pread(from, out_buf, want, (off_t)at);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO; /* shorter than it was written */
            return -1;
        }
        if (write_all(to, out_buf, (size_t)r) < 0)
            return -1;
        at += (unsigned long long)r;
        len -= (unsigned long long)r;
    }
    return 0;
}

/* OUT = the log's path followed by SUFFIX; -1 when that is too long. */
static int log_sibling(char out[4096], const char *suffix)
{
    return snprintf(out, 4096, "%s%s", log_path, suffix) >= 4096 ? -1 : 0;
}

/* Writes LINE (up to RING_RECORD - 1 bytes), space-padded to a line of RING_RECORD. */
static int ring_line(int fd, char *line, unsigned long long at)
{
    size_t len = strlen(line);
    memset(line + len, ' ', RING_RECORD - 1 - len);
    line[RING_RECORD - 1] = '\n';
    return pwrite_all(fd, line, RING_RECORD, at);
}

/* Writes the ring's state record: "LO HI SEALED CHECK". */
static int ring_record(int sealed)
{
    char line[RING_RECORD + 1];
    int n = snprintf(line, sizeof line, "%020llu %020llu %d", ring_lo, ring_hi, sealed ? 1 : 0);
    uint64_t check = 14695981039346656037ULL; /* FNV-1a 64 */
    for (int i = 0; i < n; i++) {
        check ^= (unsigned char)line[i];
        check *= 1099511628211ULL;
    }
    snprintf(line + n, sizeof line - (size_t)n, " %016llx", (unsigned long long)check);
    return ring_line(ring_fd, line, RING_RECORD);
}

/* Once the head is full: makes the ring, given to the log's owner, as PATH.ring.tmp
 * renamed to PATH.ring once its header is written. On failure ring_error says why. */
static void ring_open(void)
{
    char path[4096], tmp[4096], line[RING_RECORD + 1];
    struct stat st;
    if (log_sibling(path, ".ring") < 0 || log_sibling(tmp, ".ring.tmp") < 0) {
        ring_error = ENAMETOOLONG;
        return;
    }
    if (fstat(STDOUT_FILENO, &st) < 0) {
        ring_error = errno;
        return;
    }
    head_end = (unsigned long long)st.st_size;
    ring_fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (ring_fd < 0) {
        ring_error = errno;
        return;
    }
    if (st.st_uid != geteuid() || st.st_gid != getegid()) {
        int r = fchown(ring_fd, st.st_uid, st.st_gid); /* as the log (root only) */
        (void)r;
    }
    /* Its blocks now, so that a full disk is found here rather than half-way. */
    int e = 0;
    if (fallocate(ring_fd, 0, 0, (off_t)(RING_DATA + ring_size)) < 0) {
        e = errno;
        if ((e == EOPNOTSUPP || e == ENOSYS) && ftruncate(ring_fd, (off_t)(RING_DATA + ring_size)) == 0)
            e = 0;
    }
    snprintf(line, sizeof line, "corral-log-ring 1 %llu %llu", head_end, ring_size);
    if (e == 0 && (ring_line(ring_fd, line, 0) < 0 || ring_record(0) < 0 || rename(tmp, path) < 0))
        e = errno;
    if (e != 0) {
        close(ring_fd);
        ring_fd = -1;
        unlink(tmp);
        ring_error = e;
    }
}

/* Where the workload's output (and the shim's own words) go while the log is capped. */
static void cap_write(const char *buf, size_t n)
{
    if (head_left > 0 && n > 0) {
        size_t k = n < head_left ? n : (size_t)head_left;
        if (write_all(STDOUT_FILENO, buf, k) < 0) {
            /* lost, as the workload's own writes to a full disk are without a cap */
        }
        head_left -= k;
        head_last = buf[k - 1];
        buf += k;
        n -= k;
    }
    if (n == 0)
        return;
    if (!in_tail) {
        in_tail = 1;
        ring_open();
    }
    unsigned long long hi = ring_hi + n;
    if (ring_fd < 0) { /* no ring: no tail */
        ring_lo = ring_hi = hi;
        return;
    }
    size_t k = n < ring_size ? n : (size_t)ring_size; /* the bytes that may stay */
    buf += n - k;
    unsigned long long from = hi - k;
    int ok = 1;
    if (hi > ring_size && hi - ring_size > ring_lo) {
        /* First: the bytes about to be overwritten are no longer kept. */
        ring_lo = hi - ring_size;
        ok = ring_record(0) == 0;
    }
    size_t pos = (size_t)(from % ring_size), first = k < ring_size - pos ? k : (size_t)ring_size - pos;
    ok = ok && pwrite_all(ring_fd, buf, first, RING_DATA + pos) == 0 &&
         pwrite_all(ring_fd, buf + first, k - first, RING_DATA) == 0;
    ring_hi = hi;
    if (!ok) /* what the tail held is uncertain now: none of it is kept */
        ring_lo = hi;
    ring_record(0);
}

/* Copies what the output pipe holds now through cap_write, in at most CHUNKS reads;
 * closes it at its end. */
static void pump(int chunks)
{
    for (; chunks != 0; chunks--) {
        ssize_t n = read(out_fd, out_buf, sizeof out_buf);
        if (n > 0) {
            cap_write(out_buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || errno != EAGAIN) { /* every writer is gone */
            close(out_fd);
            out_fd = -1;
        }
        return;
    }
}

/* At the end, the pipe drained: seals the ring, appends marker and tail to the log
 * (so the log only ever grows, through the final log's prefixes) and removes the ring
 * (see the protocol above). */
static void cap_finish(void)
{
    capping = 0;
    if (!in_tail)
        return; /* all of it fit in the head: the log is whole */
    char marker[64] = "";
    if (ring_lo > 0)
        snprintf(marker, sizeof marker, "%s[corral: %llu bytes dropped]\n",
                 head_last == '\n' ? "" : "\n", ring_lo);
    if (ring_fd < 0) {
        if (write_all(STDOUT_FILENO, marker, strlen(marker)) == 0)
            say("could not keep the log's tail: ", strerror(ring_error));
        return;
    }
    ring_record(1);
    int ok = write_all(STDOUT_FILENO, marker, strlen(marker)) == 0;
    for (unsigned long long at = ring_lo; ok && at < ring_hi;) {
        unsigned long long pos = at % ring_size, len = ring_hi - at;
        if (len > ring_size - pos)
            len = ring_size - pos;
        ok = copy_range(ring_fd, RING_DATA + pos, len, STDOUT_FILENO) == 0;
        at += len;
    }
    char ring[4096];
    if (ok && log_sibling(ring, ".ring") == 0) { /* it fits: ring_open made it */
        unlink(ring);
    } else if (ftruncate(STDOUT_FILENO, (off_t)head_end) < 0) {
        /* the sealed ring stays: readers join it to the head, the server finishes it */
    }
    close(ring_fd);
    ring_fd = -1;
}

/* Waits for one of SET's signals for at most TIMEOUT_NS (< 0: no limit) and returns
 * it, or -1 when none came. With a capped log it copies the workload's output
 * meanwhile, and returns -1 after each read: the caller looks at its processes. */
static int next_signal(const sigset_t *set, long long timeout_ns)
{
    if (out_fd < 0) {
        if (timeout_ns < 0)
            return sigwaitinfo(set, NULL);
        struct timespec ts = {(time_t)(timeout_ns / 1000000000LL), (long)(timeout_ns % 1000000000LL)};
        return sigtimedwait(set, NULL, &ts);
    }
    struct pollfd p[2] = {{sig_fd, POLLIN, 0}, {out_fd, POLLIN, 0}};
    int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999LL) / 1000000LL);
    if (poll(p, 2, ms) <= 0)
        return -1;
    if (p[1].revents)
        pump(16); /* then a look at signals, even under a flood of output */
    struct signalfd_siginfo si;
    if ((p[0].revents & POLLIN) && read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
        return (int)si.ssi_signo;
    return -1;
}

static int usage(const char *why)
{
    say(why, "");
    say("usage: corral-shim STATE GRACE_SECONDS CWD -- PROGRAM [ARG...]", "");
    return 2;
}

/* The go-ahead between a process and the child it forked: the parent writes one byte
 * once the child may proceed; the child reads it, and takes EOF (the parent died or
 * said no by closing) as an order to do nothing. */
static void give_go(int fd)
{
    ssize_t w;
    do
        w = write(fd, "g", 1);
    while (w < 0 && errno == EINTR);
    close(fd);
}

static int await_go(int fd)
{
    char byte;
    ssize_t r;
    do
        r = read(fd, &byte, 1);
    while (r < 0 && errno == EINTR);
    close(fd);
    return r == 1;
}

/* Closes every descriptor above stderr: the server's own are close-on-exec, but
 * whatever the server inherited from its parent without that flag would otherwise
 * reach every workload (and keep, say, the pipe of `corral serve | tee` open). */
static void close_inherited(void)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
#endif
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) {
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        return;
    }
    int own = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        int fd = atoi(entry->d_name);
        if (fd > 2 && fd != own)
            close(fd);
    }
    closedir(dir);
}

/* Default dispositions for every signal (SIG_IGN is inherited across exec, and an
 * ignored SIGCHLD would auto-reap). Through the system call: glibc refuses to touch
 * its internal signals 32 and 33, which would stay ignored in every workload. A
 * zeroed kernel sigaction is SIG_DFL with no flags and an empty mask. */
static void default_dispositions(void)
{
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP)
            continue;
        unsigned long action[4] = {0, 0, 0, 0};
        if (syscall(SYS_rt_sigaction, s, action, NULL, sizeof(unsigned long)) < 0)
            signal(s, SIG_DFL);
    }
}

/* Parses S, digits in BASE only, as a number up to MAX; -1 if it is not one. */
static int parse_number(const char *s, int base, unsigned long max, unsigned long *out)
{
    if (s[0] < '0' || s[0] > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long n = strtoul(s, &end, base);
    if (errno != 0 || *end != '\0' || n > max)
        return -1;
    *out = n;
    return 0;
}

/* Parses "G1,G2,..." (or "": none) into a new array; -1 if malformed. */
static int parse_groups(const char *s, gid_t **out, size_t *count)
{
    size_t n = s[0] == '\0' ? 0 : 1;
    for (const char *c = s; *c; c++)
        n += *c == ',';
    gid_t *groups = malloc((n ? n : 1) * sizeof *groups);
    if (groups == NULL)
        return -1;
    char item[32];
    const char *c = s;
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(c, ",");
        unsigned long g;
        if (len >= sizeof item)
            goto bad;
        memcpy(item, c, len);
        item[len] = '\0';
        if (parse_number(item, 10, (gid_t)-2, &g) < 0)
            goto bad;
        groups[i] = (gid_t)g;
        c += len + 1;
    }
    *out = groups;
    *count = n;
    return 0;
bad:
    free(groups);
    return -1;
}

/* CORRAL_SHIM_ENV_NAME=VALUE becomes NAME=VALUE (see the protocol above). */
static void restore_hidden_env(void)
{
    static const char prefix[] = "CORRAL_SHIM_ENV_";
    const size_t plen = sizeof prefix - 1;
    for (;;) {
        char *found = NULL;
        for (char **e = environ; *e != NULL; e++) {
            if (strncmp(*e, prefix, plen) == 0 && strchr(*e, '=') != NULL) {
                found = *e;
                break;
            }
        }
        if (found == NULL)
            return;
        char *eq = strchr(found, '=');
        size_t len = (size_t)(eq - found);
        char name[len + 1];
        memcpy(name, found, len);
        name[len] = '\0';
        if (len > plen && setenv(name + plen, eq + 1, 1) != 0)
            say("cannot restore ", name + plen);
        unsetenv(name); /* also drops an empty CORRAL_SHIM_ENV_ */
    }
}

static int shim_main(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[4], "--") != 0)
        return usage("bad arguments");
    state_dir = argv[1];
    char *end;
    double grace = strtod(argv[2], &end);
    if (end == argv[2] || *end != '\0' || !(grace >= 0 && grace <= 1e7))
        return usage("bad GRACE_SECONDS");
    const char *cwd = argv[3];
    char **cmd = argv + 5;

    /* The server may run with a raised open-files limit; the workload gets the soft
     * limit the server started with (as systemd does for its services' children). */
    const char *nofile = getenv("CORRAL_SHIM_NOFILE");
    if (nofile != NULL) {
        char *nend;
        unsigned long long n = strtoull(nofile, &nend, 10);
        struct rlimit rl;
        if (nend != nofile && *nend == '\0' && getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
            (rlim_t)n < rl.rlim_cur) {
            rl.rlim_cur = (rlim_t)n;
            if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                say("cannot lower the open-files limit: ", strerror(errno));
        }
        unsetenv("CORRAL_SHIM_NOFILE");
    }

    /* The server runs with umask 077 (its files are 0600); the workload gets the umask
     * the server was started with. A value that cannot be read runs nothing. */
    int bad_env = 0;
    long workload_umask = -1;
    const char *mask = getenv("CORRAL_SHIM_UMASK");
    if (mask != NULL) {
        unsigned long m;
        if (parse_number(mask, 8, 0777, &m) == 0)
            workload_umask = (long)m;
        else {
            say("bad CORRAL_SHIM_UMASK: ", mask);
            bad_env = 1;
        }
        unsetenv("CORRAL_SHIM_UMASK");
    }

    /* Run as another user: all three variables, or none. The shim stays root (its
     * signals must reach the workload's group); only the child drops to the user. */
    const char *uid_s = getenv("CORRAL_SHIM_UID"), *gid_s = getenv("CORRAL_SHIM_GID");
    const char *groups_s = getenv("CORRAL_SHIM_GROUPS");
    int run_as = uid_s != NULL || gid_s != NULL || groups_s != NULL;
    unsigned long uid = 0, gid = 0;
    gid_t *groups = NULL;
    size_t ngroups = 0;
    if (run_as) {
        /* (uid_t)-1 and (gid_t)-1 mean "unchanged" to the kernel: never a user. */
        if (uid_s == NULL || gid_s == NULL || groups_s == NULL ||
            parse_number(uid_s, 10, (uid_t)-2, &uid) < 0 ||
            parse_number(gid_s, 10, (gid_t)-2, &gid) < 0 ||
            parse_groups(groups_s, &groups, &ngroups) < 0) {
            say("bad or incomplete CORRAL_SHIM_UID, CORRAL_SHIM_GID, CORRAL_SHIM_GROUPS", "");
            bad_env = 1;
        }
        unsetenv("CORRAL_SHIM_UID");
        unsetenv("CORRAL_SHIM_GID");
        unsetenv("CORRAL_SHIM_GROUPS");
    }

    /* The process whose exit stops the workload (the Ray node's corral agent). */
    pid_t watch_pid = 0;
    const char *watch_s = getenv("CORRAL_SHIM_WATCH_PID");
    if (watch_s != NULL) {
        unsigned long w;
        if (parse_number(watch_s, 10, INT_MAX, &w) == 0 && w > 0)
            watch_pid = (pid_t)w;
        else {
            say("bad CORRAL_SHIM_WATCH_PID: ", watch_s);
            bad_env = 1;
        }
        unsetenv("CORRAL_SHIM_WATCH_PID");
    }

    /* The log cap: both variables, or none (CORRAL_SHIM_LOG alone is bad too). */
    unsigned long cap = 0;
    const char *cap_s = getenv("CORRAL_SHIM_LOG_CAP"), *cap_path = getenv("CORRAL_SHIM_LOG");
    if (cap_s != NULL || cap_path != NULL) {
        if (cap_s == NULL || parse_number(cap_s, 10, ULONG_MAX / 4, &cap) < 0 ||
            (cap > 0 && (cap_path == NULL || cap_path[0] == '\0' ||
                         (log_path = strdup(cap_path)) == NULL))) {
            say("bad or incomplete CORRAL_SHIM_LOG_CAP, CORRAL_SHIM_LOG", "");
            bad_env = 1;
            cap = 0;
        }
        unsetenv("CORRAL_SHIM_LOG_CAP");
        unsetenv("CORRAL_SHIM_LOG");
    }

    /* Block the signals taken by sigwaitinfo first: a kill request that comes while
     * the shim starts up must wait for it, not kill it with nothing recorded. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    close_inherited();
    default_dispositions();
    /* The shim's own writes (a message on a full log, say) must not kill it. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
        say("cannot become a child subreaper: ", strerror(errno));
    if (bad_env)
        return finish("spawn", EINVAL);
    /* After close_inherited (which would close it); before the fork, so that nothing
     * runs for a watched process already gone. Close-on-exec, as every pidfd. */
    int watch_fd = -1;
    if (watch_pid > 0) {
        watch_fd = (int)syscall(SYS_pidfd_open, watch_pid, 0);
        int e = watch_fd < 0 ? errno : watched_gone(watch_fd) ? ESRCH : 0;
        if (e != 0) {
            say("cannot watch the process given in CORRAL_SHIM_WATCH_PID: ", strerror(e));
            return finish("spawn", e);
        }
    }

    /* The child reports a failed exec as its errno, a failed chdir as minus its errno,
     * on a close-on-exec pipe. It waits on a second one for a byte sent once STATE.pid is
     * written: no command runs without a trace on disk. */
    restore_hidden_env(); /* last: a restored name never instructs the shim */
    int errpipe[2], gopipe[2], outpipe[2] = {-1, -1};
    if (pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(gopipe, O_CLOEXEC) < 0)
        return finish("spawn", errno);
    if (cap > 0) { /* the workload's output comes through a pipe, read without blocking */
        if (pipe2(outpipe, O_CLOEXEC) < 0 || fcntl(outpipe[0], F_SETFL, O_NONBLOCK) < 0 ||
            (sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK)) < 0)
            return finish("spawn", errno);
        out_fd = outpipe[0];
        head_left = cap / 2;
        ring_size = cap - cap / 2;
    }
    pid_t child = fork();
    if (child < 0)
        return finish("spawn", errno);
    if (child == 0) {
        signal(SIGPIPE, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0);
        close(gopipe[1]);
        if (!await_go(gopipe[0])) /* the shim died before recording the pid */
            _exit(127);
        if (workload_umask >= 0)
            umask((mode_t)workload_umask);
        int err;
        /* Groups first (only root may set them), the user last (then nothing more can
         * be changed); before chdir and exec, so both are checked as the user. */
        if (outpipe[1] >= 0 && (dup2(outpipe[1], STDOUT_FILENO) < 0 ||
                                dup2(outpipe[1], STDERR_FILENO) < 0)) {
            err = errno;
        } else if (run_as && (setgroups(ngroups, groups) != 0 || setgid((gid_t)gid) != 0 ||
                       setuid((uid_t)uid) != 0)) {
            err = errno;
        } else if (cwd[0] != '\0' && chdir(cwd) != 0) {
            err = -errno;
        } else {
            execvp(cmd[0], cmd);
            err = errno;
        }
        ssize_t w = write(errpipe[1], &err, sizeof err);
        (void)w;
        _exit(127);
    }
    close(errpipe[1]);
    if (outpipe[1] >= 0) {
        close(outpipe[1]);
        capping = 1;
    }
    setpgid(child, child); /* also done by the child: whichever runs first wins */

    char line[32];
    snprintf(line, sizeof line, "%d\n", (int)child);
    if (write_state("pid", line) < 0) { /* the command has not run: it never will */
        int e = errno;
        say_cannot_write(state_path, e, "");
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return finish("spawn", e);
    }
    pid_written = 1;
    close(gopipe[0]);
    give_go(gopipe[1]); /* the child may exec now */
    /* A failed chdir or exec is read from errpipe once the child is reaped, not here:
     * until the child has exec'd (and it may be stopped before), a blocking read would
     * leave kill requests unanswered. */

    int status = 0, reaped = 0, terminating = 0, killed = 0;
    double deadline = 0, killed_at = 0;
    for (;;) {
        reap_all(child, &status, &reaped);
        double t = now();
        int group_alive = !(killpg(child, 0) < 0 && errno == ESRCH);
        if (reaped && (!group_alive || (killed && t - killed_at > GIVE_UP)))
            break;
        /* Leftovers of an exited workload get the same treatment as a kill request. */
        if (reaped && !terminating) {
            stop_group(child);
            terminating = 1;
            deadline = t + grace;
        }
        /* The watched process's exit is a kill request. */
        if (watch_fd >= 0 && !terminating && watched_gone(watch_fd)) {
            say("the watched process has exited: stopping the workload", "");
            stop_group(child);
            terminating = 1;
            deadline = t + grace;
        }
        if (terminating && !killed && group_alive && t >= deadline) {
            killpg(child, SIGKILL);
            killed = 1;
            killed_at = t;
        }
        int sig;
        if (!reaped && !terminating && watch_fd < 0) {
            /* Running, nothing asked: only a signal (its exit, a kill) changes that. */
            sig = next_signal(&set, -1);
        } else if (!reaped && !terminating) {
            /* The same, and the watched process's exit, seen at the next turn. */
            sig = next_signal(&set, WATCH_TICK_NS);
        } else {
            double wait = TICK;
            if (terminating && !killed && deadline - t < wait)
                wait = deadline > t ? deadline - t : 0;
            sig = next_signal(&set, (long long)(wait * 1e9));
        }
        if ((sig == SIGTERM || sig == SIGINT || sig == SIGHUP) && !terminating) {
            stop_group(child);
            terminating = 1;
            deadline = now() + grace;
        }
    }
    if (out_fd >= 0) /* what the group wrote before it ended (a pipe holds 64 KiB) */
        pump(64);
    if (out_fd >= 0)
        close(out_fd);
    out_fd = -1;
    if (capping)
        cap_finish();
    int err;
    ssize_t n;
    do /* no writer is left: the child is reaped, and the pipe closed on its exec */
        n = read(errpipe[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof err)
        return err < 0 ? finish("chdir", -err) : finish("spawn", err);
    if (WIFSIGNALED(status))
        return finish("signal", WTERMSIG(status));
    return finish("exit", WEXITSTATUS(status));
}

/* --- launcher mode ---------------------------------------------------------------
 *
 *   corral-shim --launcher PADDING
 *
 * A resident process that forks shims, so that a workload costs no exec of the shim
 * (on a VM, glibc's start-up alone costs ~0.5 ms of CPU: every cpuid is a VM exit).
 * stdin is a SOCK_SEQPACKET socket. Each request is one message: "N\0", then N
 * strings (the shim's arguments: STATE GRACE CWD -- PROGRAM [ARG...]), then the
 * environment's strings, each NUL-terminated; the workload's log travels as an
 * SCM_RIGHTS descriptor. The forked shim starts a session, takes the log as stdout
 * and stderr and /dev/null as stdin, writes its arguments over the launcher's
 * command line (PADDING makes room) so that /proc/PID/cmdline names the shim and
 * its STATE as for an exec'd one, and runs as above. The reply is the shim's pid as
 * an int (or minus an errno), with a pidfd of it as SCM_RIGHTS: the launcher reaps
 * its children, so the server could not open one itself in time. EOF on the socket
 * (the server is gone) ends the launcher; the shims it forked live on.
 */

static char request[128 * 1024];

static void on_sigchld(int sig)
{
    (void)sig; /* only interrupts ppoll */
}

static void set_cmdline(char *area, size_t size, char **args, int n)
{
    size_t used = 0;
    memset(area, 0, size);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(args[i]) + 1;
        if (used + len >= size)
            break;
        memcpy(area + used, args[i], len);
        used += len;
    }
}

/* In the forked child: becomes the shim of one request, once the launcher has told
 * the server about it (a byte on GO; EOF means the reply never left: run nothing). */
static int launched(int go, int logfd, size_t len, char *shim, char *area, size_t area_size)
{
    if (!await_go(go))
        _exit(0);
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += request[i] == '\0';
    char **strings = malloc((count + 2) * sizeof *strings);
    if (strings == NULL)
        return 1;
    size_t k = 0;
    for (size_t i = 0; i < len; i += strlen(request + i) + 1)
        strings[k++] = request + i;
    char *end;
    long nargs = strtol(strings[0], &end, 10);
    if (*end != '\0' || nargs < 5 || (size_t)nargs + 1 > count)
        return 2;
    char **envp = malloc((count - (size_t)nargs) * sizeof *envp);
    if (envp == NULL)
        return 1;
    size_t e = 0;
    for (char **p = strings + 1 + nargs; p < strings + count; p++)
        envp[e++] = *p;
    envp[e] = NULL;
    char **argv = strings; /* the shim, then its NARGS arguments */
    argv[0] = shim;
    argv[nargs + 1] = NULL; /* the first environment string, copied above */

    setsid();
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
        return 1;
    if (null > 2)
        close(null);
    if (logfd > 2)
        close(logfd);
    environ = envp;
    set_cmdline(area, area_size, argv, (int)nargs + 1);
    return shim_main((int)nargs + 1, argv);
}

static int launcher(int argc, char **argv)
{
    char *area = argv[0];
    size_t area_size = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) + 1 - area);
    char *shim = strdup(argv[0]);
    if (shim == NULL)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    /* SIGCHLD is taken in ppoll only. Kill requests stay blocked, here and so in every
     * forked shim until it waits for them: one sent right after the launch is kept. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGHUP);
    sigemptyset(&waiting);
    sigaddset(&waiting, SIGTERM);
    sigaddset(&waiting, SIGINT);
    sigaddset(&waiting, SIGHUP);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        struct pollfd pfd = {0, POLLIN, 0};
        if (ppoll(&pfd, 1, NULL, &waiting) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        char control[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {request, sizeof request};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = recvmsg(0, &msg, MSG_CMSG_CLOEXEC);
        if (n == 0)
            return 0; /* the server is gone */
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return 1;
        }
        int logfd = -1;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (c != NULL && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(&logfd, CMSG_DATA(c), sizeof(int));
        int reply = -EINVAL, pidfd = -1, go[2] = {-1, -1};
        if (logfd >= 0 && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) && request[n - 1] == '\0') {
            pid_t pid = -1;
            if (pipe2(go, O_CLOEXEC) == 0) {
                pid = fork();
                if (pid == 0) {
                    close(go[1]);
                    _exit(launched(go[0], logfd, (size_t)n, shim, area, area_size));
                }
            }
            reply = pid < 0 ? -errno : pid;
            if (pid > 0)
                pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (go[0] >= 0)
                close(go[0]);
        }
        if (logfd >= 0)
            close(logfd);
        char out[CMSG_SPACE(sizeof(int))];
        struct iovec riov = {&reply, sizeof reply};
        struct msghdr rmsg;
        memset(&rmsg, 0, sizeof rmsg);
        rmsg.msg_iov = &riov;
        rmsg.msg_iovlen = 1;
        if (pidfd >= 0) {
            memset(out, 0, sizeof out);
            rmsg.msg_control = out;
            rmsg.msg_controllen = sizeof out;
            struct cmsghdr *rc = CMSG_FIRSTHDR(&rmsg);
            rc->cmsg_level = SOL_SOCKET;
            rc->cmsg_type = SCM_RIGHTS;
            rc->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(rc), &pidfd, sizeof(int));
        }
        ssize_t sent;
        do
            sent = sendmsg(0, &rmsg, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        int gone = sent < 0 ? errno : 0;
        if (pidfd >= 0)
            close(pidfd);
        if (go[1] >= 0) {
            if (sent > 0)
                give_go(go[1]); /* the server knows the shim: let it run */
            else
                close(go[1]); /* unanswered, it exits without running anything */
        }
        if (gone == EPIPE)
            return 0;
    }
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--launcher") == 0)
        return launcher(argc, argv);
    return shim_main(argc, argv);
}
