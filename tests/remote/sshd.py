"""Real OpenSSH servers on 127.0.0.1 for the remote tests and benchmarks.

Each server has its own host key and sshd_config in a temporary directory;
the client gets an ssh_config (``-F``) naming every server by an alias, a key
in ``authorized_keys`` (via ``AuthorizedKeysFile``) and a known_hosts file
generated from the servers' host keys. Nothing under /root/.ssh or /etc/ssh is
read or written. Sessions get ``HOME`` set to an empty directory (no rc files,
so ``python3`` is the system's) and accept ``TETHER_TEST_ID`` and
``TETHER_RUNTIME_DIR`` from the client, so remote jobs are attributed to the
test that started them and write their journal records where it looks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = "/run/sshd"  # compiled into Debian's sshd


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "tether-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path.with_suffix(".pub").read_text().split(" ", 2)[1]


@dataclass
class Server:
    """One sshd on 127.0.0.1."""

    name: str
    port: int
    directory: Path
    host_key_b64: str
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        # Our own child: its pid cannot be reused before we reap it.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class SshLab:
    """Servers plus the client's ssh_config, key and known_hosts."""

    base: Path
    servers: dict[str, Server] = field(default_factory=dict)
    aliases: dict[str, dict[str, str | int]] = field(default_factory=dict)
    client_key: Path = Path()

    @property
    def config_file(self) -> str:
        return str(self.base / "ssh_config")

    @property
    def home(self) -> Path:
        return self.base / "home"

    def start(
        self,
        name: str,
        *,
        trusted: bool = True,
        extra: str = "",
        env_pass: bool = True,
    ) -> Server:
        directory = self.base / name
        directory.mkdir()
        key_b64 = _keygen(directory / "host_key")
        server = Server(name, _free_port(), directory, key_b64)
        home = self.base / f"home-{name}"
        home.mkdir(exist_ok=True)
        setenv = f"HOME={home}"
        config = [
            "ListenAddress 127.0.0.1",
            f"Port {server.port}",
            f"HostKey {directory / 'host_key'}",
            "PidFile none",
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "MaxStartups 500",
            "MaxSessions 500",
            "LogLevel ERROR",
            f"SetEnv {setenv}" if "SetEnv" not in extra else "",
            "AcceptEnv TETHER_TEST_ID TETHER_RUNTIME_DIR" if env_pass else "",
            extra,
        ]
        (directory / "sshd_config").write_text("\n".join(c for c in config if c) + "\n")
        Path(PRIVSEP_DIR).mkdir(mode=0o755, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with open(directory / "sshd.log", "wb") as log_file:
            server.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            if server.proc.poll() is not None:
                log = (directory / "sshd.log").read_text()
                raise RuntimeError(f"sshd {name} exited: {log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", server.port), timeout=1),
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd {name} did not listen on {server.port}")
            time.sleep(0.02)
        self.servers[name] = server
        if trusted:
            with open(self.base / "known_hosts", "a") as f:
                f.write(f"[127.0.0.1]:{server.port} ssh-ed25519 {key_b64}\n")
        return server

    def alias(self, alias: str, server: str | None = None, **options: str | int) -> str:
        """Name a host in the client's ssh_config: a server, or raw options."""
        entry: dict[str, str | int] = {}
        if server is not None:
            entry = {"HostName": "127.0.0.1", "Port": self.servers[server].port}
        entry.update(options)
        self.aliases[alias] = entry
        self._write_config()
        return alias

    def _write_config(self) -> None:
        blocks = [
            f"Host {alias}\n" + "".join(f"  {k} {v}\n" for k, v in entry.items())
            for alias, entry in self.aliases.items()
        ]
        blocks.append(
            "Host *\n"
            "  User root\n"
            f"  IdentityFile {self.client_key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.base / 'known_hosts'}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  UpdateHostKeys no\n"
            "  BatchMode yes\n"
            "  SendEnv TETHER_TEST_ID TETHER_RUNTIME_DIR\n"
            "  ControlMaster no\n"
            "  ConnectTimeout 30\n"
            "  LogLevel ERROR\n"
        )
        (self.base / "ssh_config").write_text("\n".join(blocks))

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def make_lab(base: Path) -> SshLab:
    """An empty lab: client key, authorized_keys, known_hosts, ssh_config."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o700)
    lab = SshLab(base)
    lab.client_key = base / "client_key"
    key_b64 = _keygen(lab.client_key)
    (base / "authorized_keys").write_text(f"ssh-ed25519 {key_b64} tether-test\n")
    (base / "known_hosts").write_text("")
    (base / "home").mkdir()
    lab._write_config()
    return lab
