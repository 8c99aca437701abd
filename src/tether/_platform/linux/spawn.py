"""Fork + exec straight into a cgroup: clone3(CLONE_INTO_CGROUP), no shim.

The portable way in is a /bin/sh shim that writes its own pid to
``cgroup.procs`` before exec'ing the job. That write migrates a task, which
takes ``cgroup_threadgroup_rwsem`` for writing: a percpu rwsem whose writer
waits for an RCU grace period (rcu_sync_enter) unless another write came
just before. On a quiet machine that is ~10 ms per job, plus the shell's
own exec. clone3(2) with CLONE_INTO_CGROUP (Linux 5.7) creates the child
in the target cgroup instead (the fork path only takes that rwsem for
reading), so the job's first instruction already runs inside it, as with
the shim, and nothing could fork before containment.

clone3 has no libc wrapper and Python has no binding. Two ways in:

- **native** (``_vspawn``, an optional C extension): clone3 with
  CLONE_VM|CLONE_VFORK on a stack of its own, as glibc's posix_spawn does
  with clone. The child shares our memory, runs only C code until its exec
  and we resume once it has exec'd: no page tables copied (a fork of a 15 MB
  job keeper took ~2.5 ms, then ~1.4 ms of Python in the child; posix_spawn
  of `true` ~0.2 ms), and, as nothing but the kernel and the child's own
  stack is touched, safe in a **multi-threaded** process too.
- **ctypes**: a raw clone3 through libc's syscall(), a fork whose child goes
  on running Python until it execs. That is safe only where a plain fork()
  without Python's at-fork hooks is: in a **single-threaded** process (no
  lock another thread holds can be copied held), checked on every call (the
  thread count from /proc/self/stat).

:func:`start` takes the native way when the extension imports, matches this
file (:data:`_NATIVE_ABI`; in a checkout, the CRC of the C source it was
built from) and the kernel accepts its flags; else the ctypes way; else it
raises :class:`Unavailable` and callers take the shim: never weaker, only
slower. Both children do the same set-up (:func:`_child` is the reference).
"""

from __future__ import annotations

import errno
import fcntl
import os

from tether import _signals
from tether._once import once
from tether._records import NamedTuple

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

#: clone3 and close_range share their numbers across the architectures that
#: have them (the generic syscall table from 5.3 and 5.9 on).
_SYS_CLONE3 = 435
_SYS_CLOSE_RANGE = 436
_CLONE_PIDFD = 0x1000
_CLONE_INTO_CGROUP = 0x200000000
_CLOSE_RANGE_CLOEXEC = 1 << 2


class Unavailable(Exception):
    """clone3 into a cgroup cannot be used here: take the shim path."""


@once
def _clone_args() -> Any:
    """struct clone_args, CLONE_ARGS_SIZE_VER2 (88 bytes: up to .cgroup).

    Built on first use: ctypes (~3 ms to import) is needed only by the
    ctypes way, not where the native module serves."""
    import ctypes

    names = ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
             "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")  # fmt: skip
    return type(
        "_CloneArgs", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_uint64) for n in names]}
    )


@once
def _syscall() -> Callable[..., int] | None:
    if os.uname().machine not in ("x86_64", "aarch64", "riscv64", "loongarch64"):
        return None  # other tables (e.g. alpha, mips o32) number them differently
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


def _threads() -> int:
    with open("/proc/self/stat", "rb") as f:
        data = f.read(4096)
    return int(data[data.rindex(b")") + 2 :].split()[17])


#: The _vspawn.c this file speaks to (its VSPAWN_ABI): a module built from
#: another version of it is not used.
_NATIVE_ABI = 2
#: False: never the native way (tests of the ctypes way).
_use_native = True
#: Tests: a signal the native child sends itself right after resetting its
#: handlers (where the ctypes child's tests hook os.setsid).
_raise_in_child = 0


@once
def _native_module() -> Any:
    """The _vspawn extension, or None: not built (optional), or stale."""
    try:
        # Not importlib.import_module: importing importlib is ~1 ms of every start.
        from tether._platform.linux import _vspawn as module  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(module, "ABI", None) != _NATIVE_ABI:
        return None
    # In a checkout (an editable install builds in place), the source sits
    # beside the module: one built from an older source is not used even
    # when nobody bumped the ABI. An installed wheel has no source here.
    source = os.path.join(os.path.dirname(__file__), "_vspawn.c")
    try:
        with open(source, "rb") as f:
            text = f.read(1 << 20)
    except OSError:
        return module
    import zlib

    return module if zlib.crc32(text) == getattr(module, "SOURCE_CRC", None) else None


def native() -> bool:
    """The native (vfork-like) way is there: its cost does not grow with this
    process's size, and it needs no single-threaded process."""
    return _use_native and _native_module() is not None


def usable() -> bool:
    """clone3 may be tried in this process now: the native way, or the
    ctypes one in a single-threaded process."""
    return native() or _ctypes_usable()


def _ctypes_usable() -> bool:
    if _syscall() is None:
        return False
    try:
        return _threads() == 1
    except (OSError, ValueError, IndexError):
        return False


def resident_bytes() -> int:
    """This process's resident set: what a fork copies the page tables of."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read(256).split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _exec_list(argv0: str, env: Mapping[str, str]) -> list[bytes]:
    """Where execve is tried, as subprocess.Popen does (PATH from ``env``)."""
    exe = os.fsencode(argv0)
    if os.path.dirname(exe):
        return [exe]
    # os.get_exec_path(env)'s rule, without the warnings module it imports
    # (for bytes keys, which a str Mapping has none of).
    path = env.get("PATH")
    dirs = (os.defpath if path is None else path).split(os.pathsep)
    return [os.path.join(os.fsencode(d), exe) for d in dirs]


class Started:
    """A child made by :func:`start`: it exists (pid, pidfd) and will exec or fail."""

    def __init__(self, pid: int, pidfd: int, errr: int, argv0: str, names: list[bytes],
                 cwd: str | None, settled: bool = False) -> None:  # fmt: skip
        self.pid = pid
        self.pidfd = pidfd
        self._errr = errr
        self._argv0 = argv0
        self._names = names
        self._cwd = cwd
        #: The exec is decided already (the native clone returns once the
        #: child has exec'd or died): wait_exec() will not block.
        self.settled = settled

    def wait_exec(self) -> None:
        """Return once the child has exec'd; else reap it and raise as Popen.

        Raises:
            OSError: the exec (or the set-up before it) failed; the child
                is reaped (its pidfd is left to the caller to close).
        """
        try:
            report = _read_all(self._errr)
        finally:
            os.close(self._errr)
        if not report:
            return  # EOF: the error pipe closed on exec (O_CLOEXEC)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        code, _, index = report.partition(b":")
        num = int(code) if code.isdigit() else errno.EINVAL
        if index == b"-1":
            raise OSError(num, os.strerror(num), self._cwd)
        names = self._names
        name = names[int(index)] if index.isdigit() and int(index) < len(names) else b""
        raise OSError(num, os.strerror(num), os.fsdecode(name) or self._argv0)


def spawn(argv: Sequence[str], env: Mapping[str, str], **options: Any) -> tuple[int, int]:
    """:func:`start`, then wait for the exec: (pid, pidfd), as Popen would."""
    child = start(argv, env, **options)
    try:
        child.wait_exec()
    except OSError:
        os.close(child.pidfd)
        raise
    return child.pid, child.pidfd


def start(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdio: Sequence[int],
    cgroup: str | None,
    start_new_session: bool = True,
    umask: int = -1,
    extra_groups: Sequence[int] | None = None,
    nofile: int | None = None,
    cwd: str | None = None,
) -> Started:
    """Create ``argv``'s process as a child of this one, in ``cgroup`` from birth.

    ``stdio`` are the fds that become 0, 1, 2 (-1: keep this process's).
    Every other fd is closed across the exec (close_fds). ``nofile``: the
    soft RLIMIT_NOFILE the job gets; ``cwd`` its directory (else ours).
    Returns as soon as the child exists: :meth:`Started.wait_exec` says
    whether its exec succeeded (meanwhile its pid and start time are final).

    Raises:
        Unavailable: clone3 (or CLONE_INTO_CGROUP) cannot be used; nothing
            was started.
        ValueError: a NUL in an argument or the environment, or a name
            with "=" (as Popen; nothing was started).
    """
    use_native = native()
    if not use_native and not _ctypes_usable():
        raise Unavailable("clone3 is not usable in this process")
    candidates = _exec_list(argv[0], env)
    bargv = [os.fsencode(a) for a in argv]
    benv = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    # Refused here, as Popen does, not in the child (where os.execve's
    # ValueError is no OSError and would go unreported).
    for item in (*bargv, *benv, *benv.values()):
        if b"\0" in item:
            raise ValueError("embedded null byte")
    if any(b"=" in k for k in benv):
        raise ValueError("illegal environment variable name")
    errr, errw = os.pipe2(os.O_CLOEXEC)
    if errw < 3:
        # Our stdio was closed: the child's dup2 onto 0-2 would replace the
        # error pipe and an exec failure would go unreported (as Popen, move it).
        low = errw
        errw = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(low)
    cg_fd = -1
    if cgroup is not None:
        try:
            cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            os.close(errr)
            os.close(errw)
            raise Unavailable(f"cannot open the job cgroup: {err.strerror}") from None
    pid = pidfd = -1
    settled = False
    try:
        if use_native:
            try:
                pid, pidfd = _native_module().spawn(
                    candidates, bargv, [k + b"=" + v for k, v in benv.items()], tuple(stdio),
                    errw, cg_fd, start_new_session, umask,
                    None if extra_groups is None else list(extra_groups),
                    nofile, None if cwd is None else os.fsencode(cwd), _raise_in_child,
                )  # fmt: skip
                settled = True
            except OSError as err:
                # ENOSYS: no clone3 (or a seccomp filter's answer); EINVAL:
                # a flag this kernel does not know (CLONE_INTO_CGROUP < 5.7).
                # The ctypes way may still do; any other error it would share.
                if err.errno not in (errno.ENOSYS, errno.EINVAL) or not _ctypes_usable():
                    raise Unavailable(f"clone3: {err.strerror}") from None
        if pid < 0:
            pid, pidfd = _clone_ctypes(
                candidates, bargv, benv, stdio, errw, cg_fd, start_new_session, umask,
                extra_groups, nofile, cwd,
            )  # fmt: skip
    finally:
        os.close(errw)
        if cg_fd >= 0:
            os.close(cg_fd)
        if pid < 0:
            os.close(errr)
    return Started(pid, pidfd, errr, argv[0], candidates, cwd, settled)


def _clone_ctypes(
    candidates: list[bytes],
    bargv: list[bytes],
    benv: dict[bytes, bytes],
    stdio: Sequence[int],
    errw: int,
    cg_fd: int,
    start_new_session: bool,
    umask: int,
    extra_groups: Sequence[int] | None,
    nofile: int | None,
    cwd: str | None,
) -> tuple[int, int]:
    """clone3 through libc's syscall(): a fork whose child runs :func:`_child`."""
    import ctypes

    syscall = _syscall()
    assert syscall is not None  # _ctypes_usable() said so
    pidfd = ctypes.c_int(-1)
    args = _clone_args()(
        flags=_CLONE_PIDFD | (_CLONE_INTO_CGROUP if cg_fd >= 0 else 0),
        pidfd=ctypes.addressof(pidfd),
        exit_signal=_signals.SIGCHLD,
        cgroup=max(cg_fd, 0),
    )
    # Signals stay blocked across the clone, as _posixsubprocess does: one
    # arriving before the child has reset Python's handlers would run the
    # caller's handler (a KeyboardInterrupt) in the child instead of acting
    # on it as on any new process. A pending signal is not inherited; the
    # parent gets it once the mask is restored.
    mask = _signals.pthread_sigmask(_signals.SIG_BLOCK, _signals.valid_signals())
    try:
        pid = syscall(
            ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.c_long(ctypes.sizeof(args))
        )
        if pid == 0:
            _child(syscall, candidates, bargv, benv, stdio, errw, start_new_session, umask,
                   extra_groups, nofile, cwd, mask)  # fmt: skip
        if pid < 0:
            raise Unavailable(f"clone3: {os.strerror(ctypes.get_errno())}")
    finally:
        _signals.pthread_sigmask(_signals.SIG_SETMASK, mask)
    return pid, pidfd.value


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 64)
        except InterruptedError:
            continue
        if not chunk or len(out) > 64:
            return out
        out += chunk


def _child(
    syscall: Callable[..., int],
    candidates: list[bytes],
    argv: list[bytes],
    env: dict[bytes, bytes],
    stdio: Sequence[int],
    errw: int,
    start_new_session: bool,
    umask: int,
    extra_groups: Sequence[int] | None,
    nofile: int | None,
    cwd: str | None,
    mask: Iterable[int],
) -> None:
    """The new process: set up, exec, or report why not. Never returns."""
    import ctypes  # loaded already by the parent (_clone_ctypes): a lookup

    failed = 0
    index = 0
    try:
        try:
            # Signals the caller handles in Python get their default action
            # here, as exec would give them, before any can be delivered.
            for sig in _signals.valid_signals():
                if callable(_signals.getsignal(sig)):
                    _signals.signal(sig, _signals.SIG_DFL)
            _signals.pthread_sigmask(_signals.SIG_SETMASK, mask)
            if cwd is not None:
                index = -1  # a failure names the directory, as Popen's
                os.chdir(cwd)
                index = 0
            if start_new_session:
                os.setsid()
            if umask >= 0:
                os.umask(umask)
            if extra_groups is not None:
                os.setgroups(list(extra_groups))
            if nofile is not None:
                import resource

                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
            # A stdio source that sits on another target slot (stdout=2) is
            # moved out of the way first, as _posixsubprocess does.
            src = [
                fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) if 0 <= fd < 3 and fd != n else fd
                for n, fd in enumerate(stdio)
            ]
            for n, fd in enumerate(src):
                if fd == n:
                    os.set_inheritable(n, True)
                elif fd >= 0:
                    os.dup2(fd, n)
            # close_fds: every fd from 3 up closes at exec (the error pipe too,
            # which is how the parent learns the exec succeeded).
            close_range = (_SYS_CLOSE_RANGE, 3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC)
            if syscall(*(ctypes.c_long(a) for a in close_range)) < 0:
                os.closerange(3, errw)
                os.closerange(errw + 1, os.sysconf("SC_OPEN_MAX"))
            # Python ignores SIGPIPE and SIGXFSZ; a job must start with the
            # defaults (Popen's restore_signals).
            for name in ("SIGPIPE", "SIGXFSZ"):
                if hasattr(_signals, name):
                    _signals.signal(getattr(_signals, name), _signals.SIG_DFL)
        except BaseException as err:  # anything: the child must report and _exit
            num = err.errno if isinstance(err, OSError) else None
            failed, index = num or errno.EINVAL, index or len(candidates)
        else:
            for i, path in enumerate(candidates):
                try:
                    os.execve(path, argv, env)
                except OSError as err:
                    # Popen's rule: the first error that is not "not here"
                    # wins (EACCES on one PATH entry beats ENOENT on the rest).
                    missing = (errno.ENOENT, errno.ENOTDIR)
                    if not failed or (failed in missing and err.errno not in missing):
                        failed, index = err.errno or errno.EINVAL, i
        os.write(errw, f"{failed}:{index}".encode())
    finally:
        os._exit(255)


class ChildArgs(NamedTuple):
    """subprocess.Popen._execute_child's arguments, in order (private API,
    stable since 3.11 added process_group): for Popen subclasses that start
    the child their own way (here, not in tether.keeper: `tether run` needs
    it without the keeper's sockets and pickle)."""

    args: Any
    executable: Any
    preexec_fn: Any
    close_fds: bool
    pass_fds: Sequence[int]
    cwd: Any
    env: Any
    startupinfo: Any
    creationflags: int
    shell: bool
    p2cread: int
    p2cwrite: int
    c2pread: int
    c2pwrite: int
    errread: int
    errwrite: int
    restore_signals: bool
    gid: Any
    gids: Any
    uid: Any
    umask: int
    start_new_session: bool
    process_group: Any
