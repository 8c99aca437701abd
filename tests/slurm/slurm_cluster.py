"""A real single-node Slurm (Debian's slurm-wlm 22.05 + munge) for the tests.

Everything lives under one private directory: munge's key and socket,
slurm.conf (outside /etc/slurm, so every client needs SLURM_CONF, as on a site
that keeps its configuration elsewhere), the state, the spool and the logs.
The node name is random, so slurmd's multiple-slurmd build (Debian's) makes its
cgroup v1 directories ``slurm_<node>/`` that no other suite shares.

slurmd runs in a private mount namespace in which a directory holding a
``tether`` launcher for this checkout is bound over /usr/local/bin: the Epilog
is contrib/slurm/tether-epilog copied byte for byte, and it execs
/usr/local/bin/tether, as shipped. Jobs and Epilogs inherit that namespace;
nothing outside it sees the bind mount.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers import SRC, as_user, kill_identity, proc_stat, read_marks, wait_for

REPO = Path(SRC).parent
EPILOG = REPO / "contrib" / "slurm" / "tether-epilog"
PLUGINS = ("linuxproc", "pgid", "cgroup")


def slurm_available() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to run slurmd, slurmctld and munged"
    for exe in ("slurmd", "slurmctld", "munged", "sbatch", "scontrol", "unshare", "nsenter"):
        if shutil.which(exe, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"needs {exe}: ./run-tests installs slurm-wlm and munge as root with apt"
    return None


def cgroup_v1_root() -> str | None:
    """The directory holding the v1 controller mounts, if the freezer is mounted
    (the hybrid layout): found in /proc/self/mounts, never assumed."""
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] == "cgroup" and "freezer" in fields[3].split(","):
                return os.path.dirname(fields[1])
    return None


def plugin_unavailable(plugin: str) -> str | None:
    """Why this proctrack plugin cannot run on this machine, or None."""
    if plugin == "cgroup":
        root = cgroup_v1_root()
        if root is None:
            return "proctrack/cgroup with cgroup/v1 needs a v1 freezer mount (none here)"
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                _n, ctrl, path = line.rstrip("\n").split(":", 2)
                if "freezer" in ctrl.split(",") and path != "/":
                    return f"this process is in freezer cgroup {path}, not the root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """munged, slurmctld and slurmd, with one proctrack plugin at a time."""

    base: Path
    node: str = field(default_factory=lambda: f"tn{secrets.token_hex(3)}")
    plugin: str = ""
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for clients (scontrol, sbatch, tether): SLURM_CONF."""
        return {"SLURM_CONF": str(self.conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def setup(self) -> None:
        self.base.chmod(0o755)  # users' sbatch reads slurm.conf and the munge socket
        for d in ("etc", "state", "spool", "log", "run", "bin", "munge", "munge-run", "varlog"):
            (self.base / d).mkdir(exist_ok=True)
        (self.base / "munge").chmod(0o700)
        (self.base / "munge-run").chmod(0o755)
        (self.base / "jobs").mkdir(exist_ok=True)
        (self.base / "jobs").chmod(0o1777)  # the jobs' working directory and output
        key = self.base / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        shutil.copyfile(EPILOG, self.base / "etc" / "tether-epilog")
        (self.base / "etc" / "tether-epilog").chmod(0o755)
        launcher = self.base / "bin" / "tether"
        # The console script `pip install tether` would put there, for this
        # checkout; TETHER_CONFIG stands in for /etc/tether/tether.toml.
        launcher.write_text(
            f"#!/bin/sh\nTETHER_CONFIG={self.tether_toml} PYTHONPATH={SRC} "
            f'exec {sys.executable} -m tether.cli "$@"\n'
        )
        launcher.chmod(0o755)
        self._start(
            "munged",
            [
                "munged", "-F", "-f", f"--socket={self.munge_socket}",
                f"--key-file={key}", f"--log-file={self.base / 'log' / 'munged.log'}",
                f"--pid-file={self.base / 'munge' / 'munged.pid'}",
                f"--seed-file={self.base / 'munge' / 'seed'}",
            ],
        )  # fmt: skip
        wait_for(lambda: os.path.exists(self.munge_socket), 10, "munged's socket")
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()

    @property
    def tether_toml(self) -> Path:
        return self.base / "etc" / "tether.toml"

    @property
    def decisions(self) -> Path:
        """Where the Epilog's decisions go: no syslog socket here, so the
        default file, /var/log/tether/prune.log, inside slurmd's namespace."""
        return self.base / "varlog" / "tether" / "prune.log"

    def enter(self) -> list[str]:
        """argv prefix that runs a command in slurmd's mount namespace."""
        return ["nsenter", "-t", str(self.daemons["slurmd"].pid), "-m", "--"]

    @property
    def munge_socket(self) -> str:
        return str(self.base / "munge-run" / "sock")

    def write_conf(self, plugin: str, extra: str = "") -> None:
        b = self.base
        proctrack = f"proctrack/{plugin}"
        text = f"""\
ClusterName=tether{self.node}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={b / "state"}
SlurmdSpoolDir={b / "spool"}/%n
SlurmctldPidFile={b / "run" / "slurmctld.pid"}
SlurmdPidFile={b / "run" / "slurmd-%n.pid"}
SlurmctldLogFile={b / "log" / "slurmctld.log"}
SlurmdLogFile={b / "log" / "slurmd-%n.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType={proctrack}
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
Epilog={b / "etc" / "tether-epilog"}
PrologEpilogTimeout=60
KillWait=2
MinJobAge=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerParameters=sched_interval=1
PlugStackConfig={b / "etc" / "plugstack.conf"}
{extra}
NodeName={self.node} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        (b / "etc" / "plugstack.conf").write_text("")
        self.conf.write_text(text)
        cgroup_conf = "CgroupPlugin=cgroup/v1\n"
        root = cgroup_v1_root()
        if root is not None:
            cgroup_conf += f"CgroupMountpoint={root}\n"
        (b / "etc" / "cgroup.conf").write_text(cgroup_conf)
        for p in (self.conf, b / "etc" / "cgroup.conf", b / "etc" / "plugstack.conf"):
            p.chmod(0o644)

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.out", "ab")  # noqa: SIM115
        with log:
            self.daemons[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**self.env, "LC_ALL": "C"},
                start_new_session=True,
            )

    def start(self, plugin: str) -> None:
        """slurmctld and slurmd with ``proctrack/<plugin>``; waits for the node to be idle."""
        self.stop_slurm()
        self.plugin = plugin
        self.write_conf(plugin)
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self.start_slurmd()

    def start_slurmd(self) -> None:
        bind = (
            f"mount --bind {self.base / 'bin'} /usr/local/bin && "
            f"mount --bind {self.base / 'varlog'} /var/log && "
            f"exec slurmd -D -f {self.conf} -N {self.node}"
        )
        self._start("slurmd", ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind])
        wait_for(
            lambda: self.node_state() in ("idle", "mixed", "allocated"), 60, f"node {self.node} up"
        )

    def stop_slurmd(self) -> None:
        self._stop("slurmd")

    def _stop(self, name: str) -> None:
        p = self.daemons.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def stop_slurm(self) -> None:
        self._stop("slurmd")
        self._stop("slurmctld")

    def stop(self) -> None:
        self.stop_slurm()
        self._stop("munged")
        # slurmd leaves its (empty) slurm_<node> cgroup behind under cgroup/v1.
        root = cgroup_v1_root()
        for controller in ("freezer", "cpuset") if root is not None else ():
            top = Path(root) / controller / f"slurm_{self.node}"
            for d in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def run(self, *argv: str, user: pwd.struct_passwd | None = None, check: bool = True) -> str:
        cmd = list(argv)
        if user is not None:
            cmd = as_user(user, ["env", f"SLURM_CONF={self.conf}", *cmd])
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=60,
            check=False,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            why = done.stderr.decode(errors="replace")
            raise AssertionError(f"{' '.join(argv)}: status {done.returncode}: {why}")
        return done.stdout.decode(errors="replace")

    def node_state(self) -> str:
        out = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False)
        return out.strip().lower()

    def job_state(self, job: str) -> str:
        out = self.run("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()
        return out or "GONE"

    def sbatch(self, user: pwd.struct_passwd, script: str, *opts: str) -> str:
        out = self.run(
            "sbatch", "--parsable", f"--chdir={self.base / 'jobs'}", "--output=%j.out",
            *opts, "--wrap", script, user=user,
        )  # fmt: skip
        return out.strip().split(";")[0]

    def log(self, name: str) -> str:
        path = self.base / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""


def kill_marks(marks: dict[str, tuple[int, int]]) -> None:
    for pid, starttime in marks.values():
        kill_identity(pid, starttime)
    wait_for(
        lambda: all(
            (st := proc_stat(pid)) is None or st.starttime != start or st.state in ("Z", "X")
            for pid, start in marks.values()
        ),
        10,
        "the test's processes to die",
    )


# Run by the jobs (and the tests) as the job's user: each mode leaves one
# process behind and writes its NAME.pid mark ("PID STARTTIME").
SPAWN = r"""
import os, signal, sys, time
d, mode, name = sys.argv[1], sys.argv[2], sys.argv[3]
if mode in ("daemon", "daemon-env"):
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
elif mode == "setsid":
    os.setsid()
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open("/proc/self/stat", "rb") as f:
    start = f.read().rsplit(b")", 1)[1].split()[19].decode()
with open(f"{d}/{name}.tmp", "w") as f:
    f.write(f"{os.getpid()} {start}")
os.rename(f"{d}/{name}.tmp", f"{d}/{name}.pid")
while True:
    time.sleep(3600)
"""


@dataclass
class Lab:
    """The cluster with the current plugin, the users, and this test's marks."""

    cluster: Cluster
    users: dict[str, pwd.struct_passwd]
    python: str
    dir: Path
    jobs: list[str] = field(default_factory=list)

    def leave(self, mode: str, name: str) -> str:
        """A shell line that leaves one process of ``mode`` behind."""
        spawn = self.dir / "spawn.py"
        if mode == "daemon":  # env -i: no SLURM_JOB_ID, no test id
            return f"env -i {self.python} {spawn} {self.dir} daemon {name}"
        if mode == "nohup":
            return f"nohup {self.python} {spawn} {self.dir} plain {name} >/dev/null 2>&1 &"
        return f"{self.python} {spawn} {self.dir} {mode} {name} &"

    def job(self, user: str, name: str, *modes: str) -> str:
        """A batch job leaving ``modes`` behind; it ends when the test calls :meth:`end`."""
        lines = [self.leave(m, f"{name}-{m}") for m in modes]
        lines.append(f"touch {self.dir}/{name}.ready")
        lines.append(f"while [ ! -e {self.dir}/{name}.end ]; do sleep 0.1; done")
        job_id = self.cluster.sbatch(self.users[user], "\n".join(lines), f"--job-name={name}")
        self.jobs.append(job_id)
        wait_for((self.dir / f"{name}.ready").exists, 60, f"job {name} to start")
        return job_id

    def end(self, name: str) -> None:
        (self.dir / f"{name}.end").touch()

    def marks(self) -> dict[str, tuple[int, int]]:
        return read_marks(self.dir)

    def cleanup(self) -> None:
        for job_id in self.jobs:
            self.cluster.run("scancel", job_id, check=False)
        kill_marks(self.marks())
        for job_id in self.jobs:
            wait_for(lambda j=job_id: self.cluster.job_state(j) == "GONE", 60, f"job {job_id} gone")  # type: ignore[misc]
