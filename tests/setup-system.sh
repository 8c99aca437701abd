#!/bin/sh
# System packages the suite tests against (real programs, not fakes), installed
# when missing and we may (root, apt). Without one, the tests that need it are
# skipped with a reason naming it. Called by ./run-tests.
set -u
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || exit 0
export DEBIAN_FRONTEND=noninteractive
missing=""
# tests/remote start real sshd instances on 127.0.0.1.
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    missing="$missing openssh-server openssh-client"
fi
# tests/integration/test_cli_bootstrap.py runs ./demo on the distribution's
# python3, whose venv needs ensurepip (Debian: python3-venv).
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing="$missing python3-venv"
fi
# tests/integration/test_keeper.py: real daemons under tether.start() (ssh-agent,
# gpg-agent: both non-dumpable).
command -v ssh-agent >/dev/null 2>&1 || missing="$missing openssh-client"
command -v gpg-agent >/dev/null 2>&1 || missing="$missing gnupg"
# tests/integration/test_forwarding.py compares tether as PID 1 with tini;
# test_foreground.py drives --foreground through a tmux pane (a real pty).
for tool in tini tmux; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
# tests/integration/test_completion*: the completion scripts run in real shells.
for tool in zsh fish; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -f /usr/share/bash-completion/bash_completion ] || missing="$missing bash-completion"
# tests/slurm start a real Slurm (munged, slurmctld, slurmd) under a temp dir:
# ~8 s to install on Debian 12, ~1 s per cluster start.
if ! command -v slurmd >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmd ]; then
    missing="$missing slurm-wlm munge"
fi
[ -z "$missing" ] && exit 0
# shellcheck disable=SC2086
{ apt-get update -qq && apt-get install -y -qq $missing; } >/dev/null 2>&1 ||
    echo "run-tests: could not install$missing; the tests that need them will be skipped" >&2
exit 0
