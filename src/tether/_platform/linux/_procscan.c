/* tether._platform.linux._procscan: the pruner's /proc scan in one call.
 *
 * Optional (setup.py builds it with optional=True); tether.prune.scan uses
 * it through tether/_platform/linux/procscan.py and falls back to its own
 * Python scan when it is missing or stale. It does what that scan does -- a
 * listing of /proc, then an open, one bounded read and a close of every
 * PID/stat -- without a Python call, path string and bytes object per
 * process, and parses only the well-formed case: a stat line this strict
 * parser does not take (a pid or number that is not plain digits, a state
 * that is not ASCII, too few fields) is handed back raw, so the Python
 * parser decides it and its result or error is the same with or without
 * this module. /proc contents are hostile: comm may hold ") ", spaces,
 * newlines or invalid UTF-8 (it ends at the *last* ") ", as in the Python
 * parser, and is decoded with surrogateescape there and here).
 *
 * scan(proc_dir, now, ticks, pf_kthread) -> list, in directory order, of
 *   (pid, ppid, pgid, sid, starttime, state, comm, kernel_thread, cputime, age)
 *       a parsed stat line (the arguments of tether.prune.scan.Proc);
 *   (name, bytes)   the stat line for the Python parser;
 *   (name, errno)   the open or read failed (other than ENOENT/ESRCH: gone).
 * A process that left an empty read (reaped meanwhile) is skipped. The
 * listing and the reads run with the GIL released (the rows are made after
 * them): a caller may scan in a thread while its interpreter goes on.
 *
 * read_shown(proc_dir, pid, cmdline_limit) -> (cmdline, cgroup, stat) bytes
 *   the three files the pruner shows a stray by, read by path in that order
 *   (cmdline bounded as the Python reader bounds it); OSError as os.open and
 *   os.read raise it.
 *
 * read_status(proc_dir, pid) -> ((ruid, euid, suid, fsuid), groups) or bytes
 *   /proc/PID/status, read as the Python reader reads it, its "Uid:" and
 *   "Groups:" lines parsed when they are plain digits and whitespace (else
 *   the bytes, for the Python parser to decide); OSError as above.
 *
 * read_statuses(proc_dir, pids) -> list, one item a pid: what read_status
 *   returns, or the errno it would raise.
 * read_shown_many(proc_dir, pids, cmdline_limit) -> list, one item a pid:
 *   what read_shown returns, or the errno of the first of its files that
 *   failed (each pid's three files are read in that order by one thread).
 *
 * capture(proc_dir, pids) -> list of (pid, pidfd, stat, cmdline), or None
 *   what tether._platform.linux.capture does in Python, for a frozen
 *   cgroup's members before its cgroup.kill: per pid, in this order,
 *   pidfd_open, then PID/stat (read as procfs.read_stat reads it), then
 *   PID/cmdline (one read of at most 64 KiB); a pid whose pidfd_open gives
 *   ESRCH, or whose stat read is empty or fails, is left out (its pidfd
 *   closed); any other pidfd_open error gives None with every pidfd closed
 *   (the caller then reads its own way). The rows keep the pids' order.
 *
 * The reads of scan, read_statuses, read_shown_many and capture run with
 * the GIL released and, where there are many and more than one CPU, in two
 * threads (taking a few items at a time): /proc reads are the kernel's
 * work, and on 2 CPUs the halves take half the wall time.
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The procscan.py this file speaks to checks it (and SOURCE_CRC, set by
 * setup.py): a module built from another version of this file is not used. */
#define PROCSCAN_ABI 2

#ifndef TETHER_PROCSCAN_CRC
#define TETHER_PROCSCAN_CRC -1 /* built without setup.py: source unknown */
#endif

#define STAT_SIZE 4096 /* one read, as the Python scan does */
#define MAX_DIGITS 18  /* fits an int64 with room: longer goes to Python */

/* Plain decimal digits, 1..MAX_DIGITS of them; -1 otherwise. */
static long long digits(const char *s, size_t n)
{
    long long v = 0;
    if (n == 0 || n > MAX_DIGITS)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int retry_open(int dirfd, const char *path)
{
    int fd;
    do
        fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static ssize_t retry_read(int fd, char *buf, size_t size)
{
    ssize_t n;
    do
        n = read(fd, buf, size);
    while (n < 0 && errno == EINTR);
    return n;
}

/* The parsed row, or NULL with no exception set when the Python parser must
 * decide (NULL with an exception: out of memory). */
static PyObject *parse(const char *d, size_t n, double now, double ticks, long long pf_kthread)
{
    /* comm ends at the last ") " (rpartition in the Python parser). */
    size_t close = n;
    for (size_t i = n >= 2 ? n - 2 + 1 : 0; i-- > 0;) {
        if (d[i] == ')' && d[i + 1] == ' ') {
            close = i;
            break;
        }
    }
    if (close == n)
        return NULL;
    /* pid ends at the first " (" of what comes before (head.index(b" (")). */
    size_t lpar = close;
    for (size_t i = 0; i + 1 < close; i++) {
        if (d[i] == ' ' && d[i + 1] == '(') {
            lpar = i;
            break;
        }
    }
    if (lpar == close)
        return NULL;
    long long pid = digits(d, lpar);
    if (pid < 0)
        return NULL;
    /* The fields after comm: f[0] state ... f[19] starttime, each ended by a space. */
    const char *f[20];
    size_t len[20];
    size_t pos = close + 2;
    for (int k = 0; k < 20; k++) {
        const char *sp = memchr(d + pos, ' ', n - pos);
        if (sp == NULL)
            return NULL;
        f[k] = d + pos;
        len[k] = (size_t)(sp - (d + pos));
        pos = (size_t)(sp - d) + 1;
    }
    long long ppid = digits(f[1], len[1]), pgid = digits(f[2], len[2]);
    long long sid = digits(f[3], len[3]), flags = digits(f[6], len[6]);
    long long utime = digits(f[11], len[11]), stime = digits(f[12], len[12]);
    long long start = digits(f[19], len[19]);
    if (ppid < 0 || pgid < 0 || sid < 0 || flags < 0 || utime < 0 || stime < 0 || start < 0)
        return NULL;
    /* Exact below 2**53, so the same doubles as Python's int / int. */
    if (utime + stime >= (1LL << 53) || start >= (1LL << 53))
        return NULL;
    /* Not ASCII: decode() may fail, the Python parser's call (the caller
     * clears the UnicodeDecodeError). */
    PyObject *state = PyUnicode_DecodeASCII(f[0], (Py_ssize_t)len[0], "strict");
    if (state == NULL)
        return NULL;
    PyObject *comm = PyUnicode_DecodeUTF8(d + lpar + 2, (Py_ssize_t)(close - lpar - 2),
                                          "surrogateescape");
    if (comm == NULL) {
        Py_DECREF(state);
        return NULL;
    }
    int kthread = (flags & pf_kthread) != 0 || pid == 2 || ppid == 2;
    return Py_BuildValue("(LLLLLNNOdd)", pid, ppid, pgid, sid, start, state, comm,
                         kthread ? Py_True : Py_False, (double)(utime + stime) / ticks,
                         now - (double)start / ticks);
}

/* One file to read without the GIL: NAME/FILE under the /proc fd (NAME an
 * offset into the work's names), how (the first read's SIZE bytes, then,
 * when that filled it, more chunks until EOF or LIMIT bytes: limit < 0 no
 * limit, 0 no more reads -- the Python reader's bounds), and what came of
 * it. */
struct file_read {
    size_t name;
    const char *file;
    size_t size; /* at most READ_SIZE */
    Py_ssize_t limit;
    char *data;  /* PyMem_Raw, len bytes */
    size_t len;
    int err;     /* errno of the open or read, or 0 */
    int oom;     /* no memory for data: MemoryError */
};

#define READ_SIZE 8192 /* the largest first read (status) */
#define CHUNK 65536    /* each later read */

/* The files to read. */
struct work {
    int dfd;
    const char *names;
    struct file_read *files;
};

static void read_one(const struct work *w, struct file_read *f)
{
    f->data = NULL;
    f->len = 0;
    f->err = 0;
    f->oom = 0;
    char path[NAME_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", w->names + f->name, f->file);
    int fd = retry_open(w->dfd, path);
    if (fd < 0) {
        f->err = errno;
        return;
    }
    /* Most files fit the first read: kept at their size, not the buffer's
     * (thousands of 4-8 KiB buffers would each cost a page fault). */
    char first[READ_SIZE];
    ssize_t n = retry_read(fd, first, f->size);
    if (n < 0)
        goto error;
    size_t total = (size_t)n, cap = total ? total : 1;
    int more = total == f->size && f->limit != 0;
    if (more)
        cap = total + CHUNK;
    char *buf = PyMem_RawMalloc(cap);
    if (buf == NULL) {
        f->oom = 1;
        close(fd);
        return;
    }
    memcpy(buf, first, total);
    while (more && (f->limit < 0 || total < (size_t)f->limit)) {
        if (cap - total < CHUNK) {
            char *bigger = PyMem_RawRealloc(buf, cap + CHUNK);
            if (bigger == NULL) {
                f->oom = 1;
                close(fd);
                PyMem_RawFree(buf);
                return;
            }
            buf = bigger;
            cap += CHUNK;
        }
        n = retry_read(fd, buf + total, CHUNK);
        if (n < 0) {
            int err = errno; /* before free() may change it */
            PyMem_RawFree(buf);
            errno = err;
            goto error;
        }
        if (n == 0)
            break;
        total += (size_t)n;
    }
    close(fd);
    f->data = buf;
    f->len = total;
    return;
error:
    f->err = errno;
    close(fd);
}

/* Items [0, N) of some work, shared by the calling thread and a helper:
 * ONE(CTX, i, slot) does item i (slot: 0 the caller, 1 the helper, for
 * per-thread scratch). Each item is written in place, so results stay in
 * the items' order whichever thread did them. */
struct split {
    void (*one)(void *ctx, size_t i, int slot);
    void *ctx;
    size_t n, step; /* step: items taken at a time */
    size_t next;    /* atomic: the first item no thread has taken yet */
    int stop;       /* atomic: set by an item after which the rest is moot */
};

struct split_thread {
    struct split *s;
    int slot;
};

/* Take STEP items at a time until none is left: a thread that the
 * scheduler holds back leaves the rest to the other, which waits for it
 * at most the items it took. */
static void *split_some(void *arg)
{
    const struct split_thread *t = arg;
    struct split *s = t->s;
    for (;;) {
        size_t from = __atomic_fetch_add(&s->next, s->step, __ATOMIC_RELAXED);
        if (from >= s->n)
            return NULL;
        size_t to = from + s->step < s->n ? from + s->step : s->n;
        for (size_t i = from; i < to; i++) {
            if (__atomic_load_n(&s->stop, __ATOMIC_RELAXED))
                return NULL;
            s->one(s->ctx, i, t->slot);
        }
    }
}

/* Fewer items than this are done by the calling thread alone. */
#define PARALLEL_MIN 64

/* Every item of S, in two threads when there are many and this process
 * may run on more than one CPU: /proc reads are the kernel's work, and two
 * threads do them side by side (4990 stat files: 62 -> 32 ms of wall time
 * on 2 CPUs, the same CPU time). Called without the GIL: touches no Python
 * object. Where the helper thread cannot start, the caller does everything;
 * the helper is joined before this returns. */
static void run_split(struct split *s)
{
    struct split_thread me = {s, 0}, other = {s, 1};
    cpu_set_t cpus;
    if (s->n < PARALLEL_MIN || sched_getaffinity(0, sizeof cpus, &cpus) != 0
        || CPU_COUNT(&cpus) < 2) {
        split_some(&me);
        return;
    }
    /* The helper blocks every signal: they are the interpreter's, and go
     * to its threads (whose handlers only note them). */
    sigset_t block, old;
    sigfillset(&block);
    pthread_t helper;
    int started = pthread_sigmask(SIG_SETMASK, &block, &old) == 0;
    if (started) {
        started = pthread_create(&helper, NULL, split_some, &other) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    split_some(&me);
    if (started)
        pthread_join(helper, NULL);
}

static void read_nth(void *ctx, size_t i, int slot)
{
    const struct work *w = ctx;
    (void)slot;
    read_one(w, &w->files[i]);
}

/* Read FILES[0..N) (NAMES holds their directory names), by groups of GROUP
 * files read in their order by one thread (run_split). Without the GIL. */
static void read_files(int dfd, const char *names, struct file_read *files, size_t n,
                       size_t group)
{
    struct work w = {dfd, names, files};
    struct split s = {read_nth, &w, n, 16 * group, 0, 0};
    run_split(&s);
}

static void free_files(struct file_read *files, size_t n)
{
    if (files == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        PyMem_RawFree(files[i].data);
    PyMem_RawFree(files);
}

/* A growing buffer of NUL-terminated names (offsets stay valid). */
struct names {
    char *text;
    size_t used, cap;
};

/* NAME's offset in NAMES, or -1 (no memory). */
static ssize_t add_name(struct names *names, const char *name, size_t len)
{
    if (names->cap - names->used < len + 1) {
        size_t cap = names->cap ? names->cap * 2 : 65536;
        while (cap - names->used < len + 1)
            cap *= 2;
        char *text = PyMem_RawRealloc(names->text, cap);
        if (text == NULL)
            return -1;
        names->text = text;
        names->cap = cap;
    }
    size_t at = names->used;
    memcpy(names->text + at, name, len);
    names->text[at + len] = '\0';
    names->used += len + 1;
    return (ssize_t)at;
}

/* Every numeric name of DIR, as NAME/stat reads, in directory order; the
 * count, or -1 with errno set. *OUT and NAMES are PyMem_Raw memory. No GIL
 * needed. */
static ssize_t list_stats(DIR *dir, struct file_read **out, struct names *names)
{
    size_t count = 0, slots = 0;
    struct file_read *files = NULL;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(dir);
        if (e == NULL) {
            if (errno != 0) { /* os.listdir would raise too */
                int err = errno;
                PyMem_RawFree(files);
                errno = err;
                return -1;
            }
            break;
        }
        size_t nlen = strlen(e->d_name);
        if (nlen == 0 || strspn(e->d_name, "0123456789") != nlen)
            continue;
        if (count == slots) {
            slots = slots ? slots * 2 : 8192;
            struct file_read *more = PyMem_RawRealloc(files, slots * sizeof *files);
            if (more == NULL) {
                PyMem_RawFree(files);
                errno = ENOMEM;
                return -1;
            }
            files = more;
        }
        ssize_t at = add_name(names, e->d_name, nlen);
        if (at < 0) {
            PyMem_RawFree(files);
            errno = ENOMEM;
            return -1;
        }
        struct file_read *f = &files[count++];
        f->name = (size_t)at;
        f->file = "stat";
        f->size = STAT_SIZE;
        f->limit = 0; /* one read, as the Python scan does */
        f->data = NULL;
    }
    *out = files;
    return (ssize_t)count;
}

static PyObject *ps_scan(PyObject *self, PyObject *args)
{
    PyObject *dir_obj;
    double now, ticks;
    long long pf_kthread;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&ddL", PyUnicode_FSConverter, &dir_obj, &now, &ticks,
                          &pf_kthread))
        return NULL;
    if (ticks <= 0) {
        Py_DECREF(dir_obj);
        PyErr_SetString(PyExc_ValueError, "ticks must be positive");
        return NULL;
    }
    int dfd = open(PyBytes_AS_STRING(dir_obj), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, dir_obj);
        Py_DECREF(dir_obj);
        return NULL;
    }
    int lfd = dup(dfd); /* closedir closes its own */
    DIR *dir = lfd < 0 ? NULL : fdopendir(lfd);
    if (dir == NULL) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, dir_obj);
        if (lfd >= 0)
            close(lfd);
        close(dfd);
        Py_DECREF(dir_obj);
        return NULL;
    }
    Py_DECREF(dir_obj);
    /* The listing, then every stat, with the GIL released (the rows are
     * made after): a caller may scan in a thread while its interpreter
     * goes on. */
    struct file_read *files = NULL;
    struct names names = {NULL, 0, 0};
    ssize_t count;
    int err;
    Py_BEGIN_ALLOW_THREADS
    count = list_stats(dir, &files, &names);
    err = errno;
    closedir(dir);
    if (count > 0)
        read_files(dfd, names.text, files, (size_t)count, 1);
    close(dfd);
    Py_END_ALLOW_THREADS
    if (count < 0) {
        PyMem_RawFree(names.text);
        if (err == ENOMEM)
            return PyErr_NoMemory();
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    for (ssize_t i = 0; i < count; i++) {
        const struct file_read *f = &files[i];
        if (f->oom) {
            PyErr_NoMemory();
            goto fail;
        }
        if (f->err == ENOENT || f->err == ESRCH || (f->err == 0 && f->len == 0))
            continue; /* exited meanwhile (a reaped process can leave an empty read) */
        PyObject *item = NULL;
        if (f->err == 0) {
            item = parse(f->data, f->len, now, ticks, pf_kthread);
            if (item == NULL && PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    goto fail;
                PyErr_Clear(); /* the Python parser decides */
            }
        }
        if (item == NULL) {
            PyObject *pid = PyLong_FromString(names.text + f->name, NULL, 10);
            if (pid == NULL)
                goto fail;
            item = f->err ? Py_BuildValue("(Ni)", pid, f->err)
                          : Py_BuildValue("(Ny#)", pid, f->data, (Py_ssize_t)f->len);
        }
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    free_files(files, (size_t)count);
    PyMem_RawFree(names.text);
    return out;
fail:
    free_files(files, (size_t)count);
    PyMem_RawFree(names.text);
    Py_XDECREF(out);
    return NULL;
}

/* The file at PATH: its first read of SIZE bytes, and when that filled
 * SIZE, more chunks until EOF or LIMIT bytes (limit < 0: no limit) -- the
 * Python reader's bounds. A new bytes object, or NULL with OSError set. */
static PyObject *read_file(const char *path, Py_ssize_t size, Py_ssize_t limit)
{
    int fd = retry_open(AT_FDCWD, path);
    if (fd < 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    Py_ssize_t cap = size, total = 0;
    char *buf = PyMem_Malloc((size_t)cap);
    if (buf == NULL) {
        close(fd);
        return PyErr_NoMemory();
    }
    ssize_t n = retry_read(fd, buf, (size_t)size);
    if (n < 0)
        goto oserror;
    total = n;
    if (n == size) {
        while (limit < 0 || total < limit) {
            if (cap - total < 65536) {
                char *more = PyMem_Realloc(buf, (size_t)cap + 65536);
                if (more == NULL) {
                    close(fd);
                    PyMem_Free(buf);
                    return PyErr_NoMemory();
                }
                buf = more;
                cap += 65536;
            }
            n = retry_read(fd, buf + total, 65536);
            if (n < 0)
                goto oserror;
            if (n == 0)
                break;
            total += n;
        }
    }
    close(fd);
    PyObject *out = PyBytes_FromStringAndSize(buf, total);
    PyMem_Free(buf);
    return out;
oserror:;
    int err = errno;
    close(fd);
    PyMem_Free(buf);
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *ps_read_shown(PyObject *self, PyObject *args)
{
    PyObject *dir_obj;
    long long pid;
    Py_ssize_t limit;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&Ln", PyUnicode_FSConverter, &dir_obj, &pid, &limit))
        return NULL;
    char path[PATH_MAX];
    const char *dir = PyBytes_AS_STRING(dir_obj);
    const char *names[3] = {"cmdline", "cgroup", "stat"};
    PyObject *got[3] = {NULL, NULL, NULL};
    PyObject *out = NULL;
    for (int i = 0; i < 3; i++) {
        int w = snprintf(path, sizeof path, "%s/%lld/%s", dir, pid, names[i]);
        if (w < 0 || (size_t)w >= sizeof path) {
            errno = ENAMETOOLONG;
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        got[i] = read_file(path, 4096, i == 0 ? limit : -1);
        if (got[i] == NULL)
            goto done;
    }
    out = PyTuple_Pack(3, got[0], got[1], got[2]);
done:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(got[i]);
    Py_DECREF(dir_obj);
    return out;
}

/* The rest of the first line of D that starts with KEY (the Python
 * parser's _line), or NULL. */
static const char *line_of(const char *d, size_t n, const char *key, size_t *len)
{
    size_t klen = strlen(key);
    const char *p = d, *end = d + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        if ((size_t)(stop - p) >= klen && memcmp(p, key, klen) == 0) {
            *len = (size_t)(stop - p) - klen;
            return p + klen;
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return NULL;
}

/* bytes.split()'s separators within a line. */
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Up to MAX numbers of S (whitespace-separated, each plain digits, at most
 * 10 of them): how many, or -1 when a word is not such a number. */
static int numbers(const char *s, size_t n, long long *out, int max)
{
    int count = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && is_space(s[i]))
            i++;
        if (i == n)
            break;
        size_t start = i;
        while (i < n && !is_space(s[i]))
            i++;
        if (i - start > 10)
            return -1;
        long long v = digits(s + start, i - start);
        if (v < 0)
            return -1;
        if (count < max)
            out[count] = v;
        count++;
    }
    return count;
}

/* The uids and groups of a status file's bytes DATA (a new reference), or
 * DATA itself (a new reference) when the Python parser must decide. */
static PyObject *status_value(PyObject *data)
{
    const char *d = PyBytes_AS_STRING(data);
    size_t n = (size_t)PyBytes_GET_SIZE(data), ulen = 0, glen = 0;
    const char *uid = line_of(d, n, "Uid:", &ulen);
    const char *groups = line_of(d, n, "Groups:", &glen);
    long long uids[4];
    /* Fewer than four uids, or a word that is not plain digits: Python's call. */
    if (uid == NULL || numbers(uid, ulen, uids, 4) < 4)
        return Py_NewRef(data);
    int ngroups = groups == NULL ? 0 : numbers(groups, glen, NULL, 0);
    if (ngroups < 0)
        return Py_NewRef(data);
    PyObject *gtuple = PyTuple_New(ngroups);
    if (gtuple == NULL)
        return NULL;
    if (ngroups > 0) {
        long long *gids = PyMem_Malloc(sizeof *gids * (size_t)ngroups);
        if (gids == NULL) {
            Py_DECREF(gtuple);
            return PyErr_NoMemory();
        }
        numbers(groups, glen, gids, ngroups);
        for (int i = 0; i < ngroups; i++) {
            PyObject *g = PyLong_FromLongLong(gids[i]);
            if (g == NULL) {
                PyMem_Free(gids);
                Py_DECREF(gtuple);
                return NULL;
            }
            PyTuple_SET_ITEM(gtuple, i, g);
        }
        PyMem_Free(gids);
    }
    return Py_BuildValue("((LLLL)N)", uids[0], uids[1], uids[2], uids[3], gtuple);
}

static PyObject *ps_read_status(PyObject *self, PyObject *args)
{
    PyObject *dir_obj;
    long long pid;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&L", PyUnicode_FSConverter, &dir_obj, &pid))
        return NULL;
    char path[PATH_MAX];
    int w = snprintf(path, sizeof path, "%s/%lld/status", PyBytes_AS_STRING(dir_obj), pid);
    Py_DECREF(dir_obj);
    if (w < 0 || (size_t)w >= sizeof path) {
        errno = ENAMETOOLONG;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *data = read_file(path, 8192, -1);
    if (data == NULL)
        return NULL;
    PyObject *out = status_value(data);
    Py_DECREF(data);
    return out;
}

/* The files NAMES[0..per) of every pid in PIDS, under DIR: read (in two
 * threads where they are many) with the GIL released; NULL with an
 * exception set on bad arguments or no memory. Free with free_files(). */
static struct file_read *read_pids(PyObject *dir_obj, PyObject *pids, const char *const *which,
                                   const size_t *sizes, const Py_ssize_t *limits, size_t per,
                                   size_t *count)
{
    PyObject *seq = PySequence_Fast(pids, "pids must be a sequence");
    if (seq == NULL)
        return NULL;
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    struct names names = {NULL, 0, 0};
    struct file_read *files = PyMem_RawCalloc(n * per + 1, sizeof *files);
    if (files == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        long long pid = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i));
        if (pid == -1 && PyErr_Occurred())
            goto fail;
        if (pid < 0) {
            PyErr_SetString(PyExc_ValueError, "a pid is not negative");
            goto fail;
        }
        char name[24];
        int len = snprintf(name, sizeof name, "%lld", pid);
        ssize_t at = add_name(&names, name, (size_t)len);
        if (at < 0) {
            PyErr_NoMemory();
            goto fail;
        }
        for (size_t k = 0; k < per; k++) {
            struct file_read *f = &files[i * per + k];
            f->name = (size_t)at;
            f->file = which[k];
            f->size = sizes[k];
            f->limit = limits[k];
        }
    }
    Py_CLEAR(seq);
    int dfd = open(PyBytes_AS_STRING(dir_obj), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, dir_obj);
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    read_files(dfd, names.text, files, n * per, per);
    close(dfd);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(names.text);
    for (size_t i = 0; i < n * per; i++) {
        if (files[i].oom) {
            free_files(files, n * per);
            PyErr_NoMemory();
            return NULL;
        }
    }
    *count = n;
    return files;
fail:
    Py_XDECREF(seq);
    PyMem_RawFree(names.text);
    free_files(files, 0);
    return NULL;
}

static PyObject *ps_read_statuses(PyObject *self, PyObject *args)
{
    PyObject *dir_obj, *pids;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&O", PyUnicode_FSConverter, &dir_obj, &pids))
        return NULL;
    static const char *const which[] = {"status"};
    static const size_t sizes[] = {8192};
    static const Py_ssize_t limits[] = {-1};
    size_t n = 0;
    struct file_read *files = read_pids(dir_obj, pids, which, sizes, limits, 1, &n);
    Py_DECREF(dir_obj);
    if (files == NULL)
        return NULL;
    PyObject *out = PyList_New((Py_ssize_t)n);
    if (out == NULL)
        goto done;
    for (size_t i = 0; i < n; i++) {
        PyObject *item;
        if (files[i].err) {
            item = PyLong_FromLong(files[i].err);
        } else {
            PyObject *data = PyBytes_FromStringAndSize(files[i].data, (Py_ssize_t)files[i].len);
            item = data == NULL ? NULL : status_value(data);
            Py_XDECREF(data);
        }
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
done:
    free_files(files, n);
    return out;
}

static PyObject *ps_read_shown_many(PyObject *self, PyObject *args)
{
    PyObject *dir_obj, *pids;
    Py_ssize_t limit;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&On", PyUnicode_FSConverter, &dir_obj, &pids, &limit))
        return NULL;
    /* In this order, by one thread: stat last proves the others were of the
     * process that still has the start time the caller knows. */
    static const char *const which[] = {"cmdline", "cgroup", "stat"};
    static const size_t sizes[] = {4096, 4096, 4096};
    const Py_ssize_t limits[] = {limit, -1, -1};
    size_t n = 0;
    struct file_read *files = read_pids(dir_obj, pids, which, sizes, limits, 3, &n);
    Py_DECREF(dir_obj);
    if (files == NULL)
        return NULL;
    PyObject *out = PyList_New((Py_ssize_t)n);
    if (out == NULL)
        goto done;
    for (size_t i = 0; i < n; i++) {
        const struct file_read *f = &files[i * 3];
        PyObject *item = NULL;
        int err = f[0].err ? f[0].err : f[1].err ? f[1].err : f[2].err;
        if (err) {
            item = PyLong_FromLong(err);
        } else {
            item = Py_BuildValue("(y#y#y#)", f[0].data, (Py_ssize_t)f[0].len, f[1].data,
                                 (Py_ssize_t)f[1].len, f[2].data, (Py_ssize_t)f[2].len);
        }
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
done:
    free_files(files, n * 3);
    return out;
}

/* -- capture: a frozen cgroup's members, read before cgroup.kill ---------- */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* old headers; x86_64 and aarch64 (what setup.py builds for) */
#endif

#define CAPTURE_STAT 4096      /* procfs.read_stat's reads */
#define CAPTURE_CMDLINE 65536  /* capture's one bounded cmdline read */

/* One pid of capture(): what its thread found. */
struct captured {
    int pid;
    int fd;         /* its pidfd, or -1: not opened, gone, or closed again */
    int err;        /* pidfd_open's errno other than ESRCH: the capture fails */
    int oom;        /* no memory for a read: MemoryError */
    char *stat;     /* PyMem_Raw, stat_len bytes; NULL: gone */
    size_t stat_len;
    char *cmdline;  /* PyMem_Raw, cmdline_len bytes; NULL when empty */
    size_t cmdline_len;
};

struct capture_work {
    const char *dir;         /* the proc directory's path */
    struct captured *items;
    char *scratch[2];        /* CAPTURE_CMDLINE bytes a thread (run_split's slot) */
    struct split *split;     /* to stop both threads after a failure */
};

/* procfs.read_stat(pid) (not strict): reads of CAPTURE_STAT bytes while
 * the data is a whole number of them; any error is an empty read. 0, or -1
 * without memory. *OUT is NULL when empty. */
static int capture_stat(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = retry_open(AT_FDCWD, path);
    if (fd < 0)
        return 0;
    char first[CAPTURE_STAT];
    ssize_t n = retry_read(fd, first, sizeof first);
    if (n <= 0) {
        close(fd);
        return 0;
    }
    size_t total = (size_t)n;
    char *buf = PyMem_RawMalloc(total);
    if (buf == NULL) {
        close(fd);
        return -1;
    }
    memcpy(buf, first, total);
    while (total % CAPTURE_STAT == 0) {
        char *bigger = PyMem_RawRealloc(buf, total + CAPTURE_STAT);
        if (bigger == NULL) {
            PyMem_RawFree(buf);
            close(fd);
            return -1;
        }
        buf = bigger;
        n = retry_read(fd, buf + total, CAPTURE_STAT);
        if (n < 0) { /* the Python reader's except: an empty read */
            PyMem_RawFree(buf);
            close(fd);
            return 0;
        }
        if (n == 0)
            break;
        total += (size_t)n;
    }
    close(fd);
    *out = buf;
    *len = total;
    return 0;
}

/* _read_bounded(path, 65536): one read into SCRATCH, any error empty. 0,
 * or -1 without memory. */
static int capture_cmdline(const char *path, char *scratch, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = retry_open(AT_FDCWD, path);
    if (fd < 0)
        return 0;
    ssize_t n = retry_read(fd, scratch, CAPTURE_CMDLINE);
    close(fd);
    if (n <= 0)
        return 0;
    char *buf = PyMem_RawMalloc((size_t)n);
    if (buf == NULL)
        return -1;
    memcpy(buf, scratch, (size_t)n);
    *out = buf;
    *len = (size_t)n;
    return 0;
}

/* One pid, in _platform.linux.capture's order: the pidfd first (so that a
 * pidfd not exited afterwards proves the reads were of its process: a live
 * process keeps its pid), then stat, then the command line. A zombie's
 * command line is empty, which is why a caller reads before it kills. */
static void capture_nth(void *ctx, size_t i, int slot)
{
    struct capture_work *w = ctx;
    struct captured *c = &w->items[i];
    int fd = (int)syscall(SYS_pidfd_open, c->pid, 0); /* always O_CLOEXEC */
    if (fd < 0) {
        if (errno != ESRCH) { /* gone is skipped; anything else fails all */
            c->err = errno ? errno : EINVAL;
            __atomic_store_n(&w->split->stop, 1, __ATOMIC_RELAXED);
        }
        return;
    }
    c->fd = fd;
    /* By path, as the Python reader opens them: no directory fd is held, so
     * the capture needs no fd but the pidfds and one file at a time. (The
     * directory's length was checked: the path fits.) */
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%d/stat", w->dir, c->pid);
    if (capture_stat(path, &c->stat, &c->stat_len) < 0)
        goto oom;
    if (c->stat == NULL) { /* gone (or unreadable): skipped, its pidfd closed */
        close(fd);
        c->fd = -1;
        return;
    }
    snprintf(path, sizeof path, "%s/%d/cmdline", w->dir, c->pid);
    if (capture_cmdline(path, w->scratch[slot], &c->cmdline, &c->cmdline_len) < 0)
        goto oom;
    return;
oom:
    c->oom = 1; /* its pidfd stays in c->fd: closed with the others */
    __atomic_store_n(&w->split->stop, 1, __ATOMIC_RELAXED);
}

/* Every pidfd ITEMS hold is closed, every buffer freed. */
static void free_captured(struct captured *items, size_t n, int close_fds)
{
    if (items == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        if (close_fds && items[i].fd >= 0)
            close(items[i].fd);
        PyMem_RawFree(items[i].stat);
        PyMem_RawFree(items[i].cmdline);
    }
    PyMem_RawFree(items);
}

static PyObject *ps_capture(PyObject *self, PyObject *args)
{
    PyObject *dir_obj, *pids;
    (void)self;
    if (!PyArg_ParseTuple(args, "O&O", PyUnicode_FSConverter, &dir_obj, &pids))
        return NULL;
    PyObject *seq = PySequence_Fast(pids, "pids must be iterable");
    if (seq == NULL) {
        Py_DECREF(dir_obj);
        return NULL;
    }
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    struct captured *items = PyMem_RawCalloc(n + 1, sizeof *items);
    if (items == NULL) {
        Py_DECREF(seq);
        Py_DECREF(dir_obj);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        items[i].fd = -1;
        /* A pid_t, as os.pidfd_open takes it (OverflowError beyond). */
        int overflow = 0;
        long pid = PyLong_AsLongAndOverflow(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i),
                                            &overflow);
        if (pid == -1 && PyErr_Occurred())
            goto bad;
        if (overflow || pid < INT_MIN || pid > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "a pid does not fit a pid_t");
            goto bad;
        }
        items[i].pid = (int)pid;
    }
    Py_CLEAR(seq);
    /* Room for "/<pid>/cmdline" (a pid_t: at most 11 characters). */
    if ((size_t)PyBytes_GET_SIZE(dir_obj) + 32 > PATH_MAX) {
        errno = ENAMETOOLONG;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, dir_obj);
        goto bad;
    }
    struct split s = {capture_nth, NULL, n, 16, 0, 0};
    struct capture_work w = {PyBytes_AS_STRING(dir_obj), items, {NULL, NULL}, &s};
    s.ctx = &w;
    w.scratch[0] = PyMem_RawMalloc(CAPTURE_CMDLINE);
    w.scratch[1] = PyMem_RawMalloc(CAPTURE_CMDLINE);
    if (w.scratch[0] == NULL || w.scratch[1] == NULL) {
        PyMem_RawFree(w.scratch[0]);
        PyMem_RawFree(w.scratch[1]);
        PyErr_NoMemory();
        goto bad;
    }
    /* The tree is frozen meanwhile: its CPUs are idle, so both threads read. */
    Py_BEGIN_ALLOW_THREADS
    run_split(&s);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(w.scratch[0]);
    PyMem_RawFree(w.scratch[1]);
    Py_CLEAR(dir_obj);
    int failed = 0, oom = 0;
    for (size_t i = 0; i < n; i++) {
        failed |= items[i].err != 0;
        oom |= items[i].oom;
    }
    if (oom || failed) {
        /* No pidfd for some process (a seccomp filter, no fd left): None,
         * every one opened closed, and the caller reads its own way. */
        free_captured(items, n, 1);
        if (oom)
            return PyErr_NoMemory();
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const struct captured *c = &items[i];
        if (c->fd < 0)
            continue;
        PyObject *item = Py_BuildValue("(iiy#y#)", c->pid, c->fd, c->stat,
                                       (Py_ssize_t)c->stat_len,
                                       c->cmdline ? c->cmdline : "",
                                       (Py_ssize_t)c->cmdline_len);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    free_captured(items, n, 0); /* the pidfds are the caller's now */
    return out;
fail:
    /* The list's numbers are not owners: every pidfd is closed here. */
    Py_XDECREF(out);
    free_captured(items, n, 1);
    return NULL;
bad:
    Py_XDECREF(seq);
    Py_XDECREF(dir_obj);
    free_captured(items, n, 0);
    return NULL;
}

static PyMethodDef ps_methods[] = {
    {"scan", ps_scan, METH_VARARGS, "Every /proc/PID/stat, parsed where well-formed."},
    {"read_shown", ps_read_shown, METH_VARARGS, "A stray's cmdline, cgroup and stat."},
    {"read_status", ps_read_status, METH_VARARGS, "A process's uids and groups."},
    {"read_statuses", ps_read_statuses, METH_VARARGS, "read_status of many, side by side."},
    {"read_shown_many", ps_read_shown_many, METH_VARARGS, "read_shown of many, side by side."},
    {"capture", ps_capture, METH_VARARGS, "(pid, pidfd, stat, cmdline) of each pid, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ps_module = {
    PyModuleDef_HEAD_INIT, "_procscan", "The pruner's /proc scan (optional native part).", -1,
    ps_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__procscan(void)
{
    PyObject *m = PyModule_Create(&ps_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", PROCSCAN_ABI) < 0
        || PyModule_AddIntConstant(m, "SOURCE_CRC", TETHER_PROCSCAN_CRC) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
