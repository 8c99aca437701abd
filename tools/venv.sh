#!/bin/sh
# Make (once) and refresh the project's virtual environment, then print its
# python. Used by ./demo (no extras) and ./run-tests (EXTRAS=test).
#
#   tools/venv.sh [EXTRAS]      e.g. py=$(tools/venv.sh test)
#
# A distribution's python3 refuses `pip install` outside a venv (PEP 668,
# externally-managed-environment), and Debian/Ubuntu ship venv's ensurepip
# in a separate package (python3.X-venv): as root it is installed with apt,
# otherwise this says how. System site-packages are never touched.
#
# PYTHON picks the interpreter (default: python3 from PATH, which must be
# >= 3.11); TETHER_VENV the directory (default .venv, ignored by git). A venv
# made by another interpreter is remade. The editable install is redone only
# when the build files (pyproject.toml, setup.py, the C extension's source,
# src/scripts/tether) or the extras change, so a second run needs no network.
set -eu
cd "$(dirname "$0")/.."
extras=${1:-}
py=${PYTHON:-python3}
venv=${TETHER_VENV:-.venv}
case $venv in /*) ;; *) venv="$PWD/$venv" ;; esac
me=${TETHER_VENV_CALLER:-tools/venv.sh}
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

say() { printf '%s: %s\n' "$me" "$*" >&2; }

if ! command -v "$py" >/dev/null 2>&1; then
    say "no $py on PATH: install Python >= 3.11, or set PYTHON=/path/to/python3.11"
    exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "$py is Python $("$py" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo '?'), tether needs >= 3.11: set PYTHON=/path/to/python3.11"
    exit 1
fi
base=$("$py" -c 'import sys; print(sys.executable, "%d.%d.%d" % sys.version_info[:3])')
short=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# Debian/Ubuntu: `import ensurepip` fails without python3.X-venv, and venv
# then leaves a directory without pip behind.
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "$py has no ensurepip: installing python$short-venv"
        { apt-get update -qq && apt-get install -y -qq "python$short-venv"; } >/dev/null 2>&1 ||
            { apt-get install -y -qq python3-venv >/dev/null 2>&1 || true; }
    fi
    if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        say "$py cannot make a virtual environment (no ensurepip module): install it (sudo apt-get install python$short-venv), or set PYTHON to another Python >= 3.11"
        exit 1
    fi
fi

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.tether-base" 2>/dev/null)" != "$base" ]; then
    [ -e "$venv" ] && say "remaking $venv for $base"
    "$py" -m venv --clear "$venv" >&2 || { say "could not make $venv with $py"; exit 1; }
    printf '%s\n' "$base" >"$venv/.tether-base"
    rm -f "$venv/.tether-installed"
fi

# Skip the install when this build (pyproject.toml, setup.py, the C source
# of the optional native spawn, which the editable install compiles in place,
# and the `tether` command, which it copies into $venv/bin) is already
# installed with these (or more) extras. A changed C source is rebuilt here;
# spawn.py also refuses a module built from another source.
stamp="$(cat pyproject.toml setup.py src/tether/_platform/linux/_vspawn.c src/tether/_platform/linux/_procscan.c src/scripts/tether 2>/dev/null | cksum | cut -d' ' -f1) $extras"
have=$(cat "$venv/.tether-installed" 2>/dev/null || true)
if [ "$have" != "$stamp" ] && { [ -n "$extras" ] || [ "${have%% *}" != "${stamp%% *}" ]; }; then
    spec=.
    [ -n "$extras" ] && spec=".[$extras]"
    "$venv/bin/python" -m pip install --quiet -e "$spec" >/dev/null 2>&1 ||
        "$venv/bin/python" -m pip install -e "$spec" >&2 ||
        { say "could not install tether into $venv (see pip's message above)"; exit 1; }
    printf '%s\n' "$stamp" >"$venv/.tether-installed"
fi
printf '%s\n' "$venv/bin/python"
