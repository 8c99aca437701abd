"""Fan-out as pdsh/clush: -l USER, -N, -b (gather), a status line per failing host.

Real sshd instances on 127.0.0.1 (conftest.py). ``h01``..``h20`` are spread
over three servers whose sessions get different ``HOME`` directories
(``.../home-s1`` for h01, h04, ...), which is how a command tells the
"hosts" apart.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshLab

from helpers import tether_cmd

# Which server a session runs on: s1, s2 or s3.
WHERE = 'echo "${HOME##*-}"'


def tether_run(lab: SshLab, *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        tether_cmd("run", "-F", lab.config_file, *args),
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode()


def tether_lines(err: str) -> list[str]:
    return sorted(line for line in err.splitlines() if line.startswith("tether: "))


def test_one_status_line_per_failing_host(lab: SshLab) -> None:
    rc, out, err = tether_run(
        lab,
        "-w",
        "h0[1-3],unreach",
        "--",
        "sh",
        "-c",
        'case "$HOME" in *s1) echo fine;; *s2) exit 3;; *s3) kill -KILL $$;; esac',
    )
    assert rc == 137, err  # the largest status, as today (pdsh -S)
    assert out == "h01: fine\n"
    lines = tether_lines(err)
    assert lines[:2] == [
        "tether: h02: exited with exit code 3",
        "tether: h03: killed by signal KILL (exit code 137)",
    ]
    assert lines[2].startswith("tether: unreach: ssh: ")
    assert lines[2].endswith("Connection refused (exit code 125)")
    assert len(lines) == 3, err  # nothing for h01, which succeeded


def test_single_host_keeps_ssh_like_output(lab: SshLab) -> None:
    rc, out, err = tether_run(lab, "--host", "h01", "--", "sh", "-c", "echo out; exit 3")
    assert (rc, out) == (3, "out\n")
    assert tether_lines(err) == []


def test_no_host_prefix_keeps_lines_whole(lab: SshLab) -> None:
    # Output in pieces: without the line buffering a fan-out keeps, the
    # three hosts' halves could interleave.
    script = "printf 'first '; sleep 0.2; printf 'half\\n'; printf 'second line\\n'"
    rc, out, err = tether_run(lab, "-N", "-w", "h[01-03]", "--", "sh", "-c", script)
    assert rc == 0, err
    assert sorted(out.splitlines()) == ["first half"] * 3 + ["second line"] * 3


def test_gather_prints_identical_output_once_under_a_host_list(lab: SshLab) -> None:
    rc, out, err = tether_run(lab, "-b", "-w", "h[01-06],unreach", "--", "sh", "-c", WHERE)
    assert rc == 125, err
    rule = "-" * 15
    assert out.splitlines() == [
        rule, "h[01,04] (2)", rule, "s1",
        rule, "h[02,05] (2)", rule, "s2",
        rule, "h[03,06] (2)", rule, "s3",
    ]  # fmt: skip
    # Stderr still streams, prefixed; the failing host gets its line.
    assert [line for line in tether_lines(err) if "unreach" in line]


def test_gather_keeps_output_byte_exact_and_adds_no_prefix(lab: SshLab) -> None:
    script = "printf 'a: b\\n\\n  c'; echo oops >&2"
    rc, out, err = tether_run(lab, "-b", "-w", "h[01-03]", "--", "sh", "-c", script)
    assert rc == 0, err
    assert out == "-" * 15 + "\nh[01-03] (3)\n" + "-" * 15 + "\na: b\n\n  c\n"
    assert sorted(err.splitlines()) == ["h01: oops", "h02: oops", "h03: oops"]
    rc, out, _err = tether_run(lab, "-b", "-N", "-w", "h[01-02]", "--", "echo", "x")
    assert (rc, out) == (0, "x\n")


def test_login_user_for_hosts_that_name_none(lab: SshLab) -> None:
    # badauth's ssh_config names a user sshd does not know: -l wins over it.
    rc, out, err = tether_run(lab, "-b", "-l", "root", "-w", "badauth,h01", "--", "id", "-un")
    assert rc == 0, err
    assert out.splitlines()[1:] == ["badauth,h01 (2)", "-" * 15, "root"]
    # A USER@ in the target wins over -l.
    rc, out, err = tether_run(
        lab, "-l", "no-such-user-tether", "--host", "root@h02", "--", "id", "-un"
    )
    assert (rc, out) == (0, "root\n"), err
    rc, out, err = tether_run(lab, "-l", "no-such-user-tether", "-w", "h03", "--", "true")
    assert rc == 125
    assert "Permission denied" in err


def test_bad_login_user_is_one_line(lab: SshLab) -> None:
    rc, _out, err = tether_run(lab, "-l", "-oProxyCommand=x", "-w", "h01", "--", "true")
    assert rc == 125
    assert err.strip().splitlines() == ["tether: bad user name in '-oProxyCommand=x@host'"]


#: An unprivileged user sshd lets in: sshd without PAM refuses a locked
#: account ("!" in /etc/shadow, as useradd leaves the suite's own user), so
#: this one gets "*" (no password can match, but the account is not locked).
SSH_USER = "tether-ssh-test"


def ensure_ssh_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SSH_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/bin/sh", "-p", "*", SSH_USER],
        check=True,
    )
    return pwd.getpwnam(SSH_USER)


@pytest.fixture(scope="module")
def user_host(lab: SshLab) -> Iterator[str]:
    """A server that lets SSH_USER in with the lab's key.

    sshd reads authorized_keys as the user, who cannot enter the lab's
    directory: that user gets a world-readable copy (a public key).
    """
    user = ensure_ssh_user()
    keys = Path(tempfile.mkdtemp(prefix="tether-userkeys-"))
    keys.chmod(0o755)
    (keys / "authorized_keys").write_text((lab.base / "authorized_keys").read_text())
    (keys / "authorized_keys").chmod(0o644)
    home = keys / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    name = f"user{os.getpid()}"
    # The test's TETHER_RUNTIME_DIR is root's: the user's jobs keep their
    # journal in their own runtime directory.
    lab.start(
        name,
        env_pass=False,
        extra=f"SetEnv HOME={home}\nAcceptEnv TETHER_TEST_ID\nMatch User {SSH_USER}\n"
        f"  AuthorizedKeysFile {keys / 'authorized_keys'}",
    )
    yield lab.alias(f"as-{name}", name)
    # The server stops with the lab (its directory goes with the lab's).
    shutil.rmtree(keys, ignore_errors=True)


def test_login_as_an_unprivileged_user(lab: SshLab, user_host: str) -> None:
    rc, out, err = tether_run(
        lab, "-l", SSH_USER, "-w", user_host, "--", "sh", "-c", "id -un; sleep 30 & :"
    )
    assert rc == 0, err
    assert out == f"{user_host}: {SSH_USER}\n"
