/*
 * powercut shim: an LD_PRELOAD library that lets a test simulate a power cut under a real
 * process (the `hearth` server and the RocksDB inside it).
 *
 * A SIGKILL keeps the kernel's page cache, so everything a killed process wrote is still there
 * afterwards, synced or not. This shim records, for every file under one directory, what has
 * been made durable by fsync/fdatasync, so that after the kill the test harness
 * (tests/it/support/powercut/mod.rs) can roll every file back to that durable state: the state
 * a machine that lost power could come back with, in the worst case a file system allows for
 * file contents.
 *
 * The model of durability (what survives a power cut):
 *   - A regular file's content is what it held when an fsync or fdatasync of it last began
 *     (through any descriptor). Writes after that, or never followed by one, are lost.
 *     sync_file_range, close, sync(2), syncfs(2) and the passage of time make nothing durable
 *     (strict: a test can only fail wrongly, never pass wrongly, on their account). A
 *     descriptor opened with O_SYNC/O_DSYNC makes each of its writes durable.
 *   - A file created while the shim watched exists after the cut only if its directory was
 *     fsynced after the creation; otherwise it vanishes, whatever was synced into it.
 *   - Files that existed when the harness started watching are durable as they were then.
 * Its limits (lenient where noted):
 *   - Renames, hard links, unlinks and directory creation are taken as durable at once
 *     (lenient: a real file system may lose a rename or link, or bring back an unlinked file,
 *     when the directory was not synced after it).
 *   - Descriptors are followed through dup, dup2, dup3 and fcntl(F_DUPFD); not through
 *     fork or descriptors passed over sockets.
 *   - Writes that go around the intercepted calls (stdio's internal writes, io_uring,
 *     copy_file_range) are rolled back like any unsynced write when they extend a file, but
 *     overwrites of already durable bytes are only undone when made with write, pwrite,
 *     writev, pwritev, ftruncate or O_TRUNC. Shared writable mmaps and hole punching inside
 *     durable bytes are reported as unsupported, and the harness then fails the test.
 *   - A torn write inside one sector, reordering of the durable state of different files
 *     and metadata-only journaling are not simulated: the cut is all-or-nothing per sync.
 *
 * Environment:
 *   HEARTH_POWERCUT_DIR   absolute path: files under it are watched (nothing else is touched)
 *   HEARTH_POWERCUT_LOG   the record log (appended; one line per record, see below)
 *   HEARTH_POWERCUT_UNDO  the undo file: durable bytes saved before they were overwritten
 *   HEARTH_POWERCUT_FAIL  optional marker path: while this file exists and holds "fsync",
 *                         fsync/fdatasync of watched regular files fail with EIO (nothing is
 *                         synced); while it holds "write", writes to them fail with EIO; when
 *                         it holds "cut", the next fsync/fdatasync of a watched regular file
 *                         does not sync: it waits 50 ms (so answers already sent reach their
 *                         clients) and kills the process with SIGKILL, a power cut at the
 *                         moment a sync is under way.
 *
 * Records, one per line, written with one write(2) each (so a kill never tears one):
 *   seen DEV INO SIZE          a file that existed before was first opened (durable as is)
 *   create DEV INO PDEV PINO   a file was created in directory PDEV:PINO (a new inode life)
 *   sync DEV INO SIZE          the file's first SIZE bytes are durable
 *   dirsync DEV INO            a directory was fsynced: entries created in it are durable
 *   undo DEV INO OFF LEN AT    durable bytes [OFF, OFF+LEN) were about to change; their old
 *                              value is at offset AT of the undo file
 *   unlink DEV INO             the last name of a watched file was removed
 *   fail OP DEV INO            an injected failure was returned
 *   cut DEV INO                the process killed itself in place of this file's sync
 *   unsupported WHAT PATH      something the model cannot roll back happened
 *
 * Built by the test harness with `cc -shared -fPIC -o libpowercut.so shim.c -ldl -lpthread`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <signal.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif

#define MAX_FDS 65536
#define MAX_FILES 8192

struct file {
    dev_t dev;
    ino_t ino;
    off_t synced; /* durable length */
    int live;
};

struct fdinfo {
    int file; /* index into files + 1; 0 = not watched */
    int is_dir;
    int sync_each; /* O_SYNC / O_DSYNC */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct file files[MAX_FILES];
static int nfiles;
static struct fdinfo fds[MAX_FDS];
static char prefix[PATH_MAX];
static size_t prefix_len;
static char fail_marker[PATH_MAX];
static int log_fd = -1, undo_fd = -1;
static off_t undo_end;
static int ready;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);

#define RESOLVE(name) \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static void resolve(void) {
    RESOLVE(open);
    RESOLVE(openat);
    RESOLVE(close);
    RESOLVE(dup);
    RESOLVE(dup2);
    RESOLVE(dup3);
    RESOLVE(fcntl);
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(writev);
    RESOLVE(pwritev);
    RESOLVE(pread);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(ftruncate);
    RESOLVE(fallocate);
    RESOLVE(unlink);
    RESOLVE(unlinkat);
    RESOLVE(rename);
    RESOLVE(renameat);
    RESOLVE(renameat2);
}

__attribute__((constructor)) static void init(void) {
    resolve();
    const char *dir = getenv("HEARTH_POWERCUT_DIR");
    const char *logp = getenv("HEARTH_POWERCUT_LOG");
    const char *undop = getenv("HEARTH_POWERCUT_UNDO");
    const char *failp = getenv("HEARTH_POWERCUT_FAIL");
    if (!dir || !logp || !undop || strlen(dir) >= sizeof prefix) return;
    strcpy(prefix, dir);
    prefix_len = strlen(prefix);
    while (prefix_len > 1 && prefix[prefix_len - 1] == '/') prefix[--prefix_len] = 0;
    if (failp && strlen(failp) < sizeof fail_marker) strcpy(fail_marker, failp);
    log_fd = real_open(logp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    undo_fd = real_open(undop, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (log_fd < 0 || undo_fd < 0) {
        fprintf(stderr, "powercut: cannot open %s or %s\n", logp, undop);
        abort();
    }
    undo_end = lseek(undo_fd, 0, SEEK_END);
    ready = 1;
}

static void record(const char *fmt, ...) {
    char line[PATH_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof line - 2) n = sizeof line - 2;
    line[n++] = '\n';
    if (real_write(log_fd, line, n) != n) abort(); /* a lost record would make the cut lie */
}

/* Absolute form of `path` as seen from `dirfd` (no normalisation of "..": the harness uses
   absolute paths). Returns 0 when it cannot be formed. */
static int absolute(int dirfd, const char *path, char *out) {
    if (path[0] == '/') {
        if (strlen(path) >= PATH_MAX) return 0;
        strcpy(out, path);
        return 1;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return 0;
        base[n] = 0;
    }
    return snprintf(out, PATH_MAX, "%s/%s", base, path) < PATH_MAX;
}

static int watched_path(const char *abs) {
    return ready && strncmp(abs, prefix, prefix_len) == 0 &&
           (abs[prefix_len] == 0 || abs[prefix_len] == '/');
}

static int watched_at(int dirfd, const char *path, char *abs) {
    return ready && path && absolute(dirfd, path, abs) && watched_path(abs);
}

/* The file entry for an inode; `fresh` starts a new life (a just-created inode). */
static int file_for(dev_t dev, ino_t ino, off_t size, int fresh) {
    for (int i = 0; i < nfiles; i++) {
        if (files[i].live && files[i].dev == dev && files[i].ino == ino) {
            if (fresh) files[i].synced = 0;
            return i + 1;
        }
    }
    int slot = -1;
    for (int i = 0; i < nfiles; i++)
        if (!files[i].live) {
            slot = i;
            break;
        }
    if (slot < 0) {
        if (nfiles == MAX_FILES) {
            record("unsupported too-many-files -");
            return 0;
        }
        slot = nfiles++;
    }
    files[slot] = (struct file){dev, ino, fresh ? 0 : size, 1};
    if (!fresh) record("seen %lu %lu %lld", (unsigned long)dev, (unsigned long)ino, (long long)size);
    return slot + 1;
}

/* Which injected failure is on: 'f' (fsync), 'w' (write), 'c' (cut) or 0. */
static int injected(void) {
    if (!fail_marker[0]) return 0;
    int fd = real_open(fail_marker, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[16] = {0};
    ssize_t n = real_pread(fd, buf, sizeof buf - 1, 0);
    real_close(fd);
    if (n <= 0) return 0;
    if (strncmp(buf, "fsync", 5) == 0) return 'f';
    if (strncmp(buf, "write", 5) == 0) return 'w';
    if (strncmp(buf, "cut", 3) == 0) return 'c';
    return 0;
}

static struct file *watched_fd(int fd) {
    if (fd < 0 || fd >= MAX_FDS || !fds[fd].file || fds[fd].is_dir) return NULL;
    return &files[fds[fd].file - 1];
}

/* Saves durable bytes [off, off+len) of `f` (readable through `path_or_fd`) before they change. */
static void save_durable(struct file *f, int fd, off_t off, off_t len) {
    if (off >= f->synced || len <= 0) return;
    if (off + len > f->synced) len = f->synced - off;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int rd = real_open(path, O_RDONLY | O_CLOEXEC);
    if (rd < 0) {
        record("unsupported unreadable-overwrite %lu", (unsigned long)f->ino);
        return;
    }
    off_t at = undo_end, done = 0;
    char buf[65536];
    while (done < len) {
        size_t want = (size_t)(len - done) < sizeof buf ? (size_t)(len - done) : sizeof buf;
        ssize_t n = real_pread(rd, buf, want, off + done);
        if (n <= 0) break; /* the file is shorter: nothing more to save */
        if (real_write(undo_fd, buf, n) != n) abort();
        done += n;
    }
    real_close(rd);
    undo_end += done;
    if (done > 0)
        record("undo %lu %lu %lld %lld %lld", (unsigned long)f->dev, (unsigned long)f->ino, (long long)off,
               (long long)done, (long long)at);
}

static void mark_synced(struct file *f, off_t size) {
    f->synced = size;
    record("sync %lu %lu %lld", (unsigned long)f->dev, (unsigned long)f->ino, (long long)size);
}

/* The offset a write(2) on `fd` will land at. */
static off_t write_offset(int fd) {
    int flags = real_fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_APPEND)) {
        struct stat st;
        return fstat(fd, &st) == 0 ? st.st_size : 0;
    }
    return lseek(fd, 0, SEEK_CUR);
}

static void after_write(int fd, struct file *f) {
    if (fds[fd].sync_each) {
        struct stat st;
        if (fstat(fd, &st) == 0) mark_synced(f, st.st_size);
    }
}

/* ---- opening and closing ---- */

static int opened(int dirfd, const char *path, int flags, mode_t mode, int with_mode) {
    char abs[PATH_MAX];
    if (!watched_at(dirfd, path, abs)) {
        return with_mode ? real_openat(dirfd, path, flags, mode) : real_openat(dirfd, path, flags);
    }
    pthread_mutex_lock(&lock);
    struct stat before;
    int existed = stat(abs, &before) == 0;
    if (existed && S_ISREG(before.st_mode) && (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
        int idx = file_for(before.st_dev, before.st_ino, before.st_size, 0);
        if (idx && files[idx - 1].synced > 0) {
            int rd = real_open(abs, O_RDONLY | O_CLOEXEC);
            if (rd >= 0) {
                save_durable(&files[idx - 1], rd, 0, files[idx - 1].synced);
                real_close(rd);
            }
        }
    }
    int fd = with_mode ? real_openat(dirfd, path, flags, mode) : real_openat(dirfd, path, flags);
    int saved = errno;
    struct stat st;
    if (fd >= 0 && fd < MAX_FDS && fstat(fd, &st) == 0) {
        fds[fd] = (struct fdinfo){0, 0, 0};
        if (S_ISDIR(st.st_mode)) {
            fds[fd].file = file_for(st.st_dev, st.st_ino, 0, 0);
            fds[fd].is_dir = 1;
        } else if (S_ISREG(st.st_mode)) {
            int created = !existed || before.st_ino != st.st_ino;
            fds[fd].file = file_for(st.st_dev, st.st_ino, st.st_size, created);
            fds[fd].sync_each = (flags & (O_SYNC | O_DSYNC)) != 0;
            if (created) {
                char parent[PATH_MAX];
                strcpy(parent, abs);
                char *slash = strrchr(parent, '/');
                if (slash == parent) slash[1] = 0;
                else if (slash) *slash = 0;
                struct stat pst;
                if (stat(parent, &pst) == 0)
                    record("create %lu %lu %lu %lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino,
                           (unsigned long)pst.st_dev, (unsigned long)pst.st_ino);
                else
                    record("unsupported no-parent %s", abs);
            }
        }
    } else if (fd >= MAX_FDS) {
        record("unsupported fd-too-high %s", abs);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return fd;
}

static int wants_mode(int flags) { return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE; }

/* The optional mode argument that follows `flags`, present only when the flags create a file. */
#define MODE_AFTER(flags)                          \
    mode_t mode = 0;                               \
    if (wants_mode(flags)) {                       \
        va_list ap;                                \
        va_start(ap, flags);                       \
        mode = va_arg(ap, mode_t);                 \
        va_end(ap);                                \
    }

int open(const char *path, int flags, ...) {
    resolve();
    MODE_AFTER(flags);
    return opened(AT_FDCWD, path, flags, mode, wants_mode(flags));
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...) {
    resolve();
    MODE_AFTER(flags);
    return opened(dirfd, path, flags, mode, wants_mode(flags));
}
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int __open_2(const char *path, int flags) {
    resolve();
    return opened(AT_FDCWD, path, flags, 0, 0);
}
int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

int creat(const char *path, mode_t mode) {
    resolve();
    return opened(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 1);
}
int creat64(const char *path, mode_t mode) __attribute__((alias("creat")));

int close(int fd) {
    resolve();
    if (fd >= 0 && fd < MAX_FDS && fds[fd].file) {
        pthread_mutex_lock(&lock);
        fds[fd] = (struct fdinfo){0, 0, 0};
        int r = real_close(fd);
        pthread_mutex_unlock(&lock);
        return r;
    }
    return real_close(fd);
}

/* A new descriptor `to` for what `from` is open on (dup, dup2, dup3, F_DUPFD). */
static int duplicated(int from, int to) {
    if (to >= 0 && to < MAX_FDS) {
        pthread_mutex_lock(&lock);
        fds[to] = (from >= 0 && from < MAX_FDS) ? fds[from] : (struct fdinfo){0, 0, 0};
        pthread_mutex_unlock(&lock);
    }
    return to;
}

int dup(int fd) {
    resolve();
    int r = real_dup(fd);
    return r < 0 ? r : duplicated(fd, r);
}

int dup2(int fd, int to) {
    resolve();
    int r = real_dup2(fd, to);
    return r < 0 || fd == to ? r : duplicated(fd, r);
}

int dup3(int fd, int to, int flags) {
    resolve();
    int r = real_dup3(fd, to, flags);
    return r < 0 ? r : duplicated(fd, r);
}

int fcntl(int fd, int cmd, ...) {
    resolve();
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long); /* every fcntl argument fits a long on Linux */
    va_end(ap);
    int r = real_fcntl(fd, cmd, arg);
    if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) duplicated(fd, r);
    return r;
}
int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

/* ---- writing ---- */

static ssize_t written(int fd, const void *buf, size_t n, off_t at, const struct iovec *iov, int iovcnt,
                       int positioned) {
    struct file *f = watched_fd(fd);
    if (!f) {
        if (iov) return positioned ? real_pwritev(fd, iov, iovcnt, at) : real_writev(fd, iov, iovcnt);
        return positioned ? real_pwrite(fd, buf, n, at) : real_write(fd, buf, n);
    }
    if (injected() == 'w') {
        pthread_mutex_lock(&lock);
        record("fail write %lu %lu", (unsigned long)f->dev, (unsigned long)f->ino);
        pthread_mutex_unlock(&lock);
        errno = EIO;
        return -1;
    }
    pthread_mutex_lock(&lock);
    if (iov) {
        n = 0;
        for (int i = 0; i < iovcnt; i++) n += iov[i].iov_len;
    }
    save_durable(f, fd, positioned ? at : write_offset(fd), (off_t)n);
    ssize_t r;
    if (iov) r = positioned ? real_pwritev(fd, iov, iovcnt, at) : real_writev(fd, iov, iovcnt);
    else r = positioned ? real_pwrite(fd, buf, n, at) : real_write(fd, buf, n);
    int saved = errno;
    if (r > 0) after_write(fd, f);
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

ssize_t write(int fd, const void *buf, size_t n) {
    resolve();
    return written(fd, buf, n, 0, NULL, 0, 0);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    resolve();
    return written(fd, buf, n, at, NULL, 0, 1);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t at) __attribute__((alias("pwrite")));
ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    resolve();
    return written(fd, NULL, 0, 0, iov, iovcnt, 0);
}
ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t at) {
    resolve();
    return written(fd, NULL, 0, at, iov, iovcnt, 1);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t at) __attribute__((alias("pwritev")));

int ftruncate(int fd, off_t len) {
    resolve();
    struct file *f = watched_fd(fd);
    if (!f) return real_ftruncate(fd, len);
    pthread_mutex_lock(&lock);
    save_durable(f, fd, len, f->synced - len);
    int r = real_ftruncate(fd, len);
    int saved = errno;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int fallocate(int fd, int mode, off_t off, off_t len) {
    resolve();
    struct file *f = watched_fd(fd);
    if (f && (mode & ~FALLOC_FL_KEEP_SIZE) && off < f->synced) {
        pthread_mutex_lock(&lock);
        record("unsupported fallocate-mode-%d-inside-durable-bytes %lu", mode, (unsigned long)f->ino);
        pthread_mutex_unlock(&lock);
    }
    return real_fallocate(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) __attribute__((alias("fallocate")));

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    resolve();
    if ((prot & PROT_WRITE) && (flags & MAP_SHARED) && watched_fd(fd)) {
        pthread_mutex_lock(&lock);
        record("unsupported shared-writable-mmap %lu", (unsigned long)watched_fd(fd)->ino);
        pthread_mutex_unlock(&lock);
    }
    /* The raw call: allocators map memory before this library is ready to resolve symbols. */
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));

/* ---- syncing ---- */

static int synced(int fd, int (*real)(int)) {
    if (fd < 0 || fd >= MAX_FDS || !fds[fd].file) return real(fd);
    struct file *f = &files[fds[fd].file - 1];
    if (!fds[fd].is_dir && injected() == 'c') {
        pthread_mutex_lock(&lock);
        record("cut %lu %lu", (unsigned long)f->dev, (unsigned long)f->ino);
        pthread_mutex_unlock(&lock);
        struct timespec pause = {0, 50 * 1000000L};
        nanosleep(&pause, NULL);
        kill(getpid(), SIGKILL);
    }
    if (!fds[fd].is_dir && injected() == 'f') {
        pthread_mutex_lock(&lock);
        record("fail fsync %lu %lu", (unsigned long)f->dev, (unsigned long)f->ino);
        pthread_mutex_unlock(&lock);
        errno = EIO;
        return -1;
    }
    /* Held across the sync, so no write to a watched file slips in between the size taken and
       the sync: everything up to `size` was written before the sync began. */
    pthread_mutex_lock(&lock);
    struct stat st;
    int have = fstat(fd, &st) == 0;
    int r = real(fd);
    int saved = errno;
    if (r == 0 && have) {
        if (fds[fd].is_dir) record("dirsync %lu %lu", (unsigned long)f->dev, (unsigned long)f->ino);
        else mark_synced(f, st.st_size);
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

int fsync(int fd) {
    resolve();
    return synced(fd, real_fsync);
}
int fdatasync(int fd) {
    resolve();
    return synced(fd, real_fdatasync);
}

/* ---- names ---- */

/* Before a name under the watched directory goes away (unlink, or replaced by a rename): if it
   is the last name of a watched file, that file's life ends. */
static void name_going(const char *abs) {
    struct stat st;
    if (lstat(abs, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) return;
    for (int i = 0; i < nfiles; i++) {
        if (files[i].live && files[i].dev == st.st_dev && files[i].ino == st.st_ino) {
            files[i].live = 0;
            record("unlink %lu %lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino);
        }
    }
}

int unlinkat(int dirfd, const char *path, int flags) {
    resolve();
    char abs[PATH_MAX];
    if (!watched_at(dirfd, path, abs)) return real_unlinkat(dirfd, path, flags);
    pthread_mutex_lock(&lock);
    name_going(abs);
    int r = real_unlinkat(dirfd, path, flags);
    int saved = errno;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

int unlink(const char *path) {
    resolve();
    return unlinkat(AT_FDCWD, path, 0);
}

int renameat2(int olddir, const char *oldpath, int newdir, const char *newpath, unsigned int flags) {
    resolve();
    char abs[PATH_MAX], oldabs[PATH_MAX];
    if (!watched_at(newdir, newpath, abs) && !watched_at(olddir, oldpath, oldabs))
        return real_renameat2(olddir, oldpath, newdir, newpath, flags);
    pthread_mutex_lock(&lock);
    if (watched_at(newdir, newpath, abs)) name_going(abs);
    int r = real_renameat2(olddir, oldpath, newdir, newpath, flags);
    int saved = errno;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return r;
}

int renameat(int olddir, const char *oldpath, int newdir, const char *newpath) {
    resolve();
    return renameat2(olddir, oldpath, newdir, newpath, 0);
}

int rename(const char *oldpath, const char *newpath) {
    resolve();
    return renameat2(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0);
}
