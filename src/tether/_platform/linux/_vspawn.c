/* tether._platform.linux._vspawn: a job leader created straight into its
 * cgroup the way posix_spawn creates a child, not the way fork does.
 *
 * clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP): the
 * child shares our memory (no page tables copied, no copy-on-write faults)
 * and we are suspended until it has exec'd or _exited. It runs on a stack
 * of its own and only C code that touches nothing but its own stack, the
 * context below and the kernel: no malloc, no Python, no lock. That is what
 * makes it safe in a multi-threaded process, as glibc's posix_spawn is.
 *
 * The set-up mirrors spawn._child in spawn.py point by point; a failure is
 * reported as "errno:index" on the error pipe, which spawn.Started reads.
 *
 * Built only for x86_64 and aarch64 Linux (the trampoline is per
 * architecture); elsewhere the build fails, the extension is optional, and
 * spawn.py falls back to its ctypes clone3.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if !defined(__linux__)
#error "_vspawn is Linux only"
#endif
#if !(defined(__x86_64__) && !defined(__ILP32__)) && !(defined(__aarch64__) && !defined(__ILP32__))
#error "_vspawn has a clone3 trampoline for x86_64 and aarch64 only"
#endif

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Bump with any change of spawn()'s arguments or of what the child does:
 * spawn.py refuses a module whose ABI it does not know (a stale build). */
#define VSPAWN_ABI 2

#ifndef TETHER_VSPAWN_CRC
#define TETHER_VSPAWN_CRC -1 /* built without setup.py: source unknown */
#endif

/* Generic syscall numbers, the same on x86_64 and aarch64 (5.3, 5.9). */
#define VS_SYS_CLONE3 435
#define VS_SYS_CLOSE_RANGE 436
#define VS_CLONE_VM 0x00000100ULL
#define VS_CLONE_VFORK 0x00004000ULL
#define VS_CLONE_PIDFD 0x00001000ULL
#define VS_CLONE_INTO_CGROUP 0x200000000ULL
#define VS_CLOSE_RANGE_CLOEXEC (1U << 2)
/* The kernel's sigset: 64 signals on both architectures. */
#define VS_KSIGSET 8
#define VS_NSIG 65

/* struct clone_args up to .cgroup (CLONE_ARGS_SIZE_VER2), spelled out so
 * that old kernel headers do not matter. */
struct vs_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

/* clone3 has no libc wrapper, and libc's syscall() cannot be used: the
 * child would return through its frame on a stack it does not have. This
 * trampoline keeps fn and arg in callee-saved registers across the
 * syscall (the child gets a copy of every register but the stack pointer
 * and the return value), calls fn(arg) on the new stack in the child and
 * exits with its value should it return; the parent returns the raw result
 * (pid, or -errno). The kernel starts the child's stack pointer at
 * stack + stack_size, which is page-aligned, so the call is 16-byte
 * aligned as both ABIs require. */
long tether_vspawn_clone3(struct vs_clone_args *args, size_t size, int (*fn)(void *), void *arg)
    __attribute__((visibility("hidden")));

#if defined(__x86_64__)
__asm__(".text\n"
        ".p2align 4\n"
        ".globl tether_vspawn_clone3\n"
        ".hidden tether_vspawn_clone3\n"
        ".type tether_vspawn_clone3,@function\n"
        "tether_vspawn_clone3:\n"
#if defined(__CET__)
        "  endbr64\n"
#endif
        "  push %r12\n"
        "  push %r13\n"
        "  mov %rdx, %r12\n" /* fn */
        "  mov %rcx, %r13\n" /* arg */
        "  mov $435, %eax\n" /* SYS_clone3; rdi, rsi: args, size */
        "  syscall\n"
        "  test %rax, %rax\n"
        "  jz 1f\n"
        "  pop %r13\n"
        "  pop %r12\n"
        "  ret\n"
        "1:\n" /* the child, on its own stack */
        "  xor %ebp, %ebp\n"
        "  mov %r13, %rdi\n"
        "  call *%r12\n"
        "  mov %eax, %edi\n"
        "  mov $231, %eax\n" /* exit_group */
        "  syscall\n"
        "  hlt\n"
        ".size tether_vspawn_clone3, .-tether_vspawn_clone3\n");
#elif defined(__aarch64__)
__asm__(".text\n"
        ".p2align 4\n"
        ".globl tether_vspawn_clone3\n"
        ".hidden tether_vspawn_clone3\n"
        ".type tether_vspawn_clone3,%function\n"
        "tether_vspawn_clone3:\n"
        "  hint #34\n" /* bti c (a no-op without BTI) */
        "  stp x19, x20, [sp, #-16]!\n"
        "  mov x19, x2\n" /* fn */
        "  mov x20, x3\n" /* arg */
        "  mov x8, #435\n" /* SYS_clone3; x0, x1: args, size */
        "  svc #0\n"
        "  cbz x0, 1f\n"
        "  ldp x19, x20, [sp], #16\n"
        "  ret\n"
        "1:\n" /* the child, on its own stack */
        "  mov x29, xzr\n"
        "  mov x30, xzr\n"
        "  mov x0, x20\n"
        "  blr x19\n"
        "  mov x8, #94\n" /* exit_group */
        "  svc #0\n"
        "  brk #1000\n"
        ".size tether_vspawn_clone3, .-tether_vspawn_clone3\n");
#endif

/* Everything the child needs, made by the parent before the clone. */
struct vs_ctx {
    char *const *paths; /* execve candidates, as spawn._exec_list */
    Py_ssize_t npaths;
    char *const *argv;
    char *const *envp;
    int stdio[3]; /* -1: keep ours */
    int errw;
    int setsid;
    int umask; /* -1: keep */
    const gid_t *groups;
    Py_ssize_t ngroups; /* -1: keep */
    int set_nofile;
    rlim_t nofile;
    const char *cwd; /* NULL: keep */
    long max_fd;
    int raise_signal; /* tests: a signal the child sends itself after its reset */
    unsigned char oldmask[VS_KSIGSET];
};

static long vs_raw(long n, long a, long b, long c, long d)
{
    return syscall(n, a, b, c, d);
}

/* The error report: "errno:index", no stdio in the child. */
static void vs_report(int fd, int num, Py_ssize_t index)
{
    char buf[48];
    char *p = buf + sizeof buf;
    size_t len;
    int neg = index < 0;
    unsigned long long v = neg ? (unsigned long long)(-index) : (unsigned long long)index;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        *--p = '-';
    *--p = ':';
    v = (unsigned long long)(num < 0 ? 0 : num);
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    len = (size_t)(buf + sizeof buf - p);
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

/* close_fds on a kernel without close_range (before 5.9; CLOEXEC 5.11):
 * every fd from 3 up gets FD_CLOEXEC, found through /proc/self/fd when
 * that can be read (getdents64 into a stack buffer: no opendir, which
 * mallocs), else by trying each number below the fd limit. */
static void vs_cloexec_from_3(long max_fd)
{
    char buf[1024];
    long fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        long n;
        while ((n = vs_raw(SYS_getdents64, fd, (long)buf, sizeof buf, 0)) > 0) {
            long off = 0;
            while (off < n) {
                /* struct linux_dirent64: ino 8, off 8, reclen 2, type 1, name */
                unsigned short reclen;
                const char *name = buf + off + 19;
                long num = 0;
                memcpy(&reclen, buf + off + 16, sizeof reclen);
                if (*name >= '0' && *name <= '9') {
                    for (; *name >= '0' && *name <= '9'; name++)
                        num = num * 10 + (*name - '0');
                    if (num >= 3 && num != fd)
                        fcntl((int)num, F_SETFD, FD_CLOEXEC);
                }
                off += reclen;
            }
        }
        close((int)fd);
        if (n == 0)
            return;
    }
    for (long i = 3; i < max_fd; i++)
        fcntl((int)i, F_SETFD, FD_CLOEXEC);
}

static int vs_child(void *arg)
{
    struct vs_ctx *c = arg;
    int failed = 0;
    Py_ssize_t index = 0;
    struct sigaction sa;
    int src[3];

    /* Handlers get their default action, as exec would give them, before
     * any signal can be delivered (the parent blocked them all): a handler
     * run here would run the caller's code on the caller's memory. Ignored
     * ones stay ignored. Without CLONE_SIGHAND this table is our own copy. */
    for (int sig = 1; sig < VS_NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &sa) != 0) /* libc's own (32, 33): refused */
            continue;
        if (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN) {
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = SIG_DFL;
            sigaction(sig, &sa, NULL);
        }
    }
    vs_raw(SYS_rt_sigprocmask, SIG_SETMASK, (long)c->oldmask, 0, VS_KSIGSET);
    if (c->raise_signal > 0)
        vs_raw(SYS_kill, vs_raw(SYS_getpid, 0, 0, 0, 0), c->raise_signal, 0, 0);

    if (c->cwd != NULL && chdir(c->cwd) < 0) {
        index = -1; /* a failure names the directory, as Popen's */
        goto fail;
    }
    if (c->setsid && setsid() < 0)
        goto fail;
    if (c->umask >= 0)
        umask((mode_t)c->umask);
    /* The raw syscall: glibc's setgroups() would broadcast the change to
     * every thread of the caller (SIGSETXID) through the caller's memory. */
    if (c->ngroups >= 0 && vs_raw(SYS_setgroups, (long)c->ngroups, (long)c->groups, 0, 0) < 0)
        goto fail;
    if (c->set_nofile) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
            goto fail;
        rl.rlim_cur = c->nofile;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            goto fail;
    }
    /* A stdio source that sits on another target slot (stdout=2) is moved
     * out of the way first, as _posixsubprocess does. */
    for (int n = 0; n < 3; n++) {
        int fd = c->stdio[n];
        if (fd >= 0 && fd < 3 && fd != n) {
            fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
            if (fd < 0)
                goto fail;
        }
        src[n] = fd;
    }
    for (int n = 0; n < 3; n++) {
        if (src[n] == n) {
            int flags = fcntl(n, F_GETFD);
            if (flags < 0 || fcntl(n, F_SETFD, flags & ~FD_CLOEXEC) < 0)
                goto fail;
        } else if (src[n] >= 0 && dup2(src[n], n) < 0) {
            goto fail;
        }
    }
    /* close_fds: every fd from 3 up closes at exec (the error pipe too,
     * which is how the parent learns the exec succeeded). */
    if (vs_raw(VS_SYS_CLOSE_RANGE, 3, ~0L, VS_CLOSE_RANGE_CLOEXEC, 0) < 0)
        vs_cloexec_from_3(c->max_fd);
    /* Python ignores SIGPIPE and SIGXFSZ; a job starts with the defaults
     * (Popen's restore_signals). */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGXFSZ, &sa, NULL);

    for (Py_ssize_t i = 0; i < c->npaths; i++) {
        int err;
        execve(c->paths[i], c->argv, c->envp);
        err = errno ? errno : EINVAL;
        /* Popen's rule: the first error that is not "not here" wins
         * (EACCES on one PATH entry beats ENOENT on the rest). */
        if (!failed || ((failed == ENOENT || failed == ENOTDIR) && err != ENOENT && err != ENOTDIR)) {
            failed = err;
            index = i;
        }
    }
    vs_report(c->errw, failed, index);
    _exit(255);

fail:
    failed = errno ? errno : EINVAL;
    vs_report(c->errw, failed, index < 0 ? index : c->npaths);
    _exit(255);
}

/* A NULL-terminated char* array over a tuple of bytes (which the caller
 * keeps alive). */
static char **vs_strings(PyObject *tuple, const char *what)
{
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    char **out = PyMem_New(char *, (size_t)n + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
            PyMem_Free(out);
            return NULL;
        }
        if (PyBytes_AsStringAndSize(item, &out[i], NULL) < 0) { /* embedded NUL */
            PyMem_Free(out);
            return NULL;
        }
    }
    out[n] = NULL;
    return out;
}

PyDoc_STRVAR(vs_spawn_doc,
    "spawn(paths, argv, envp, stdio, errw, cgroup_fd, setsid, umask, groups, nofile, cwd,\n"
    "      raise_signal) -> (pid, pidfd)\n\n"
    "Create the child by clone3(CLONE_VM|CLONE_VFORK|CLONE_PIDFD[|CLONE_INTO_CGROUP]);\n"
    "return once it has exec'd (or failed: then it wrote errno:index to errw and\n"
    "exited 255). paths, argv, envp: sequences of bytes; stdio: three fds (-1: keep);\n"
    "cgroup_fd -1: no cgroup; umask -1: keep; groups None: keep; nofile None: keep,\n"
    "-1: unlimited; cwd None or bytes; raise_signal 0 (tests only). OSError if the\n"
    "clone itself fails (nothing was started).");

static PyObject *vs_spawn(PyObject *self, PyObject *args)
{
    PyObject *paths_o, *argv_o, *envp_o, *groups_o, *nofile_o, *cwd_o;
    PyObject *paths_t = NULL, *argv_t = NULL, *envp_t = NULL, *result = NULL;
    char **paths = NULL, **argv = NULL, **envp = NULL;
    gid_t *groups = NULL;
    struct vs_ctx c;
    struct vs_clone_args cl;
    int cgroup_fd, setsid_flag;
    int pidfd = -1;
    long ret;
    void *stack = MAP_FAILED;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t stack_size = 64 * 1024;
    unsigned char all[VS_KSIGSET];

    (void)self;
    memset(&c, 0, sizeof c);
    if (!PyArg_ParseTuple(args, "OOO(iii)iipiOOOi:spawn", &paths_o, &argv_o, &envp_o,
                          &c.stdio[0], &c.stdio[1], &c.stdio[2], &c.errw, &cgroup_fd,
                          &setsid_flag, &c.umask, &groups_o, &nofile_o, &cwd_o,
                          &c.raise_signal))
        return NULL;
    c.setsid = setsid_flag;
    if ((paths_t = PySequence_Tuple(paths_o)) == NULL || (argv_t = PySequence_Tuple(argv_o)) == NULL
        || (envp_t = PySequence_Tuple(envp_o)) == NULL)
        goto done;
    if ((paths = vs_strings(paths_t, "paths")) == NULL || (argv = vs_strings(argv_t, "argv")) == NULL
        || (envp = vs_strings(envp_t, "envp")) == NULL)
        goto done;
    c.paths = paths;
    c.npaths = PyTuple_GET_SIZE(paths_t);
    c.argv = argv;
    c.envp = envp;
    c.ngroups = -1;
    if (groups_o != Py_None) {
        PyObject *t = PySequence_Tuple(groups_o);
        if (t == NULL)
            goto done;
        c.ngroups = PyTuple_GET_SIZE(t);
        groups = PyMem_New(gid_t, (size_t)c.ngroups + 1);
        if (groups == NULL) {
            Py_DECREF(t);
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < c.ngroups; i++) {
            unsigned long g = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(t, i));
            if (PyErr_Occurred() || g >= (gid_t)-1) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_OverflowError, "group id out of range");
                Py_DECREF(t);
                goto done;
            }
            groups[i] = (gid_t)g;
        }
        Py_DECREF(t);
        c.groups = groups;
    }
    if (nofile_o != Py_None) {
        long long v = PyLong_AsLongLong(nofile_o);
        if (v == -1 && PyErr_Occurred())
            goto done;
        c.set_nofile = 1;
        c.nofile = v < 0 ? RLIM_INFINITY : (rlim_t)v; /* resource's RLIM_INFINITY is -1 */
    }
    if (cwd_o != Py_None) {
        char *s;
        if (!PyBytes_Check(cwd_o)) {
            PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
            goto done;
        }
        if (PyBytes_AsStringAndSize(cwd_o, &s, NULL) < 0)
            goto done;
        c.cwd = s;
    }
    c.max_fd = sysconf(_SC_OPEN_MAX);
    if (c.max_fd < 0)
        c.max_fd = 1024;

    /* The child's stack, with a guard page below it (MAP_NORESERVE: only
     * the pages it touches are ever backed). */
    stack = mmap(NULL, stack_size + page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED || mprotect(stack, page, PROT_NONE) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    memset(&cl, 0, sizeof cl);
    cl.flags = VS_CLONE_VM | VS_CLONE_VFORK | VS_CLONE_PIDFD
               | (cgroup_fd >= 0 ? VS_CLONE_INTO_CGROUP : 0);
    cl.pidfd = (uint64_t)(uintptr_t)&pidfd;
    cl.exit_signal = SIGCHLD;
    cl.stack = (uint64_t)(uintptr_t)stack + page;
    cl.stack_size = stack_size;
    cl.cgroup = (uint64_t)(cgroup_fd >= 0 ? cgroup_fd : 0);
    memset(all, 0xff, sizeof all);

    Py_BEGIN_ALLOW_THREADS
    /* Every signal blocked (libc's own too) until the child has reset its
     * handlers: a signal arriving in between would otherwise run the
     * caller's handler in the child, on the caller's memory. A pending
     * signal is not inherited; we get it when our mask is restored. */
    vs_raw(SYS_rt_sigprocmask, SIG_SETMASK, (long)all, (long)c.oldmask, VS_KSIGSET);
    ret = tether_vspawn_clone3(&cl, sizeof cl, vs_child, &c);
    vs_raw(SYS_rt_sigprocmask, SIG_SETMASK, (long)c.oldmask, 0, VS_KSIGSET);
    Py_END_ALLOW_THREADS

    if (ret < 0) {
        errno = (int)-ret;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_BuildValue("(li)", ret, pidfd);
    if (result == NULL) {
        /* Out of memory with a child that has exec'd: nobody would ever hold
         * it, so it is ended and reaped here rather than left running. */
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        while (waitpid((pid_t)ret, NULL, 0) < 0 && errno == EINTR)
            ;
        close(pidfd);
    }

done:
    if (stack != MAP_FAILED)
        munmap(stack, stack_size + page);
    PyMem_Free(groups);
    PyMem_Free(envp);
    PyMem_Free(argv);
    PyMem_Free(paths);
    Py_XDECREF(envp_t);
    Py_XDECREF(argv_t);
    Py_XDECREF(paths_t);
    return result;
}

PyDoc_STRVAR(vs_set_child_subreaper_doc,
"set_child_subreaper(on) -> None: prctl(PR_SET_CHILD_SUBREAPER, on).\n"
"Here so that a process with this module needs no ctypes (~3 ms to import).");

static PyObject *vs_set_child_subreaper(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (prctl(PR_SET_CHILD_SUBREAPER, (unsigned long)on, 0UL, 0UL, 0UL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(vs_is_child_subreaper_doc,
"is_child_subreaper() -> bool: prctl(PR_GET_CHILD_SUBREAPER).");

static PyObject *vs_is_child_subreaper(PyObject *self, PyObject *unused)
{
    int value = 0;
    if (prctl(PR_GET_CHILD_SUBREAPER, (unsigned long)&value, 0UL, 0UL, 0UL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(value);
}

static PyMethodDef vs_methods[] = {
    {"spawn", vs_spawn, METH_VARARGS, vs_spawn_doc},
    {"set_child_subreaper", vs_set_child_subreaper, METH_O, vs_set_child_subreaper_doc},
    {"is_child_subreaper", vs_is_child_subreaper, METH_NOARGS, vs_is_child_subreaper_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef vs_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_vspawn",
    .m_doc = "clone3(CLONE_VM|CLONE_VFORK|CLONE_INTO_CGROUP) spawn, as posix_spawn (see spawn.py).",
    .m_size = -1,
    .m_methods = vs_methods,
};

PyMODINIT_FUNC PyInit__vspawn(void)
{
    PyObject *m = PyModule_Create(&vs_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", VSPAWN_ABI) < 0
        || PyModule_AddIntConstant(m, "SOURCE_CRC", TETHER_VSPAWN_CRC) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
