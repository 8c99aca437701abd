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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* The procscan.py this file speaks to checks it (and SOURCE_CRC, set by
 * setup.py): a module built from another version of this file is not used. */
#define PROCSCAN_ABI 1

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

/* What the reading half of scan() leaves for the parsing half: every
 * entry's name and stat bytes in one arena (offsets, as it moves when it
 * grows), its error number, in directory order. Filled without the GIL. */
struct entry {
    size_t name;   /* offset of the NUL-terminated name */
    size_t data;   /* offset of the bytes read */
    size_t got;    /* how many */
    int err;       /* errno of the open or read, or 0 */
};

struct reading {
    char *arena;
    size_t used, cap;
    struct entry *entries;
    size_t count, slots;
};

static void reading_free(struct reading *r)
{
    PyMem_RawFree(r->arena);
    PyMem_RawFree(r->entries);
}

/* Room for NEED more bytes in the arena and one more entry; -1 (ENOMEM). */
static int reserve(struct reading *r, size_t need)
{
    if (r->cap - r->used < need) {
        size_t cap = r->cap ? r->cap : 1 << 20;
        while (cap - r->used < need)
            cap *= 2;
        char *arena = PyMem_RawRealloc(r->arena, cap);
        if (arena == NULL)
            return -1;
        r->arena = arena;
        r->cap = cap;
    }
    if (r->count == r->slots) {
        size_t slots = r->slots ? r->slots * 2 : 8192;
        struct entry *entries = PyMem_RawRealloc(r->entries, slots * sizeof *entries);
        if (entries == NULL)
            return -1;
        r->entries = entries;
        r->slots = slots;
    }
    return 0;
}

/* The listing and every PID/stat, read into R: no Python object is touched,
 * so the caller runs this with the GIL released (a scan in a thread goes on
 * while the interpreter imports). 0, or -1 with errno set (ENOMEM included). */
static int read_all(DIR *dir, int dfd, struct reading *r)
{
    char path[NAME_MAX + 8];
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(dir);
        if (e == NULL)
            return errno != 0 ? -1 : 0; /* os.listdir would raise too */
        size_t nlen = strlen(e->d_name);
        if (nlen == 0 || strspn(e->d_name, "0123456789") != nlen)
            continue;
        if (reserve(r, nlen + 1 + STAT_SIZE) < 0) {
            errno = ENOMEM;
            return -1;
        }
        memcpy(path, e->d_name, nlen);
        memcpy(path + nlen, "/stat", 6);
        struct entry *ent = &r->entries[r->count];
        ent->name = r->used;
        ent->data = r->used + nlen + 1;
        ent->err = 0;
        ssize_t got = -1;
        int fd = retry_open(dfd, path);
        if (fd < 0) {
            ent->err = errno;
        } else {
            got = retry_read(fd, r->arena + ent->data, STAT_SIZE);
            if (got < 0)
                ent->err = errno;
            close(fd);
        }
        if (ent->err == ENOENT || ent->err == ESRCH || got == 0)
            continue; /* exited meanwhile */
        memcpy(r->arena + ent->name, e->d_name, nlen + 1);
        ent->got = got > 0 ? (size_t)got : 0;
        r->used = ent->data + ent->got;
        r->count++;
    }
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
    struct reading r = {NULL, 0, 0, NULL, 0, 0};
    int rc, err;
    Py_BEGIN_ALLOW_THREADS
    rc = read_all(dir, dfd, &r);
    err = errno;
    closedir(dir);
    close(dfd);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        reading_free(&r);
        if (err == ENOMEM)
            return PyErr_NoMemory();
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        reading_free(&r);
        return NULL;
    }
    for (size_t i = 0; i < r.count; i++) {
        const struct entry *ent = &r.entries[i];
        const char *name = r.arena + ent->name, *buf = r.arena + ent->data;
        PyObject *item = NULL;
        if (ent->err == 0) {
            item = parse(buf, ent->got, now, ticks, pf_kthread);
            if (item == NULL && PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    goto fail;
                PyErr_Clear(); /* the Python parser decides */
            }
        }
        if (item == NULL) {
            PyObject *pid = PyLong_FromString(name, NULL, 10);
            if (pid == NULL)
                goto fail;
            item = ent->err ? Py_BuildValue("(Ni)", pid, ent->err)
                            : Py_BuildValue("(Ny#)", pid, buf, (Py_ssize_t)ent->got);
        }
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    reading_free(&r);
    return out;
fail:
    reading_free(&r);
    Py_DECREF(out);
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
    const char *d = PyBytes_AS_STRING(data);
    size_t n = (size_t)PyBytes_GET_SIZE(data), ulen = 0, glen = 0;
    const char *uid = line_of(d, n, "Uid:", &ulen);
    const char *groups = line_of(d, n, "Groups:", &glen);
    long long uids[4];
    /* Fewer than four uids, or a word that is not plain digits: Python's call. */
    if (uid == NULL || numbers(uid, ulen, uids, 4) < 4)
        return data;
    int ngroups = groups == NULL ? 0 : numbers(groups, glen, NULL, 0);
    if (ngroups < 0)
        return data;
    PyObject *gtuple = PyTuple_New(ngroups);
    if (gtuple == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    if (ngroups > 0) {
        long long *gids = PyMem_Malloc(sizeof *gids * (size_t)ngroups);
        if (gids == NULL) {
            Py_DECREF(gtuple);
            Py_DECREF(data);
            return PyErr_NoMemory();
        }
        numbers(groups, glen, gids, ngroups);
        for (int i = 0; i < ngroups; i++) {
            PyObject *g = PyLong_FromLongLong(gids[i]);
            if (g == NULL) {
                PyMem_Free(gids);
                Py_DECREF(gtuple);
                Py_DECREF(data);
                return NULL;
            }
            PyTuple_SET_ITEM(gtuple, i, g);
        }
        PyMem_Free(gids);
    }
    Py_DECREF(data);
    return Py_BuildValue("((LLLL)N)", uids[0], uids[1], uids[2], uids[3], gtuple);
}

static PyMethodDef ps_methods[] = {
    {"scan", ps_scan, METH_VARARGS, "Every /proc/PID/stat, parsed where well-formed."},
    {"read_shown", ps_read_shown, METH_VARARGS, "A stray's cmdline, cgroup and stat."},
    {"read_status", ps_read_status, METH_VARARGS, "A process's uids and groups."},
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
