"""Start-up cost: wall time of `tether run -- true` and alternatives, and import times.

Each command is run --repeat times (interleaved), stdout/stderr discarded;
the table shows the median wall time from spawn to exit status, and the
median CPU time (user + system, of the command and what it waited for:
steadier than wall time on a loaded machine). With --baseline SRC (a
checkout's src/ directory, e.g. from `git archive REV src`), `python3 -m
tether.cli run -- true` also runs with that tether on PYTHONPATH, in the
same interleaved rounds: before and after from one run. Then the
import time of `tether` (the library) and `tether.cli` (what every command
pays) as `python3 -X importtime` reports it, with the heaviest modules under
`tether.cli` and what `tether run` imports beyond it.

    python3 bench/startup.py [--repeat 20] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import PYTHON, median, pass_miss

# With PYTHONDONTWRITEBYTECODE=1 (as in some CI images) tether's modules are
# compiled from source on every start. The "(pyc cached)" rows remove it and
# keep bytecode under a temporary PYTHONPYCACHEPREFIX (nothing written to src/).
CACHE_DIR = tempfile.mkdtemp(prefix="tether-bench-pyc-")
CACHED_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
CACHED_ENV["PYTHONPYCACHEPREFIX"] = CACHE_DIR


def wall(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall time, CPU time (user + system, with the children it reaped), status."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _pid, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
    return elapsed, usage.ru_utime + usage.ru_stime, p.returncode


def import_profile(code: str, repeat: int) -> dict[str, tuple[list[int], list[int]]]:
    """``python3 -X importtime -c CODE``, --repeat times (bytecode cached):
    module -> (self times, cumulative times) in microseconds."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for _ in range(repeat):
        err = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", code],
            capture_output=True, text=True, env=CACHED_ENV, check=True,
        ).stderr  # fmt: skip
        lines = err.splitlines()
        # site's own imports (and its .pth files') come first and cost
        # `python3 -c pass` as much: only what follows is the code's.
        start = next((i + 1 for i, ln in enumerate(lines) if ln.endswith("| site")), 0)
        for line in lines[start:]:
            if not line.startswith("import time:") or "[us]" in line:
                continue
            self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
            # Nested imports are indented under their importer; keep the depth.
            own, total = out.setdefault(name.rstrip(), ([], []))
            own.append(int(self_us))
            total.append(int(cumulative_us))
    return out


def print_import_times(repeat: int) -> None:
    print(f"\nimport time (python3 -X importtime, bytecode cached), median of {repeat} (ms)")
    for module in ("click", "tether", "tether.cli"):
        profile = import_profile(f"import {module}", repeat)
        own, total = profile[f" {module}"]  # the top-level line: one space, no indent
        print(f"  import {module:<12} {median(total) / 1000:7.1f}  (min {min(total) / 1000:.1f})")
    # What tether.cli imports, heaviest first by self time; and what
    # `tether run` adds (the engine, the configuration) after the CLI is up.
    profile = import_profile("import tether.cli", repeat)
    rows = sorted(profile.items(), key=lambda kv: -median(kv[1][0]))[:12]
    print("  heaviest modules under tether.cli (self ms, cumulative ms):")
    for name, (own, total) in rows:
        print(f"    {median(own) / 1000:6.1f} {median(total) / 1000:7.1f}  {name.strip()}")
    run_path = import_profile("import tether.cli; import tether.job, tether.config", repeat)
    extra = {n: t for n, t in run_path.items() if n not in profile and n.count(" ") == 1}
    print("  imported by `tether run` after tether.cli (cumulative ms):")
    for name, (_own, total) in sorted(extra.items(), key=lambda kv: -median(kv[1][1])):
        if median(total) >= 500:
            print(f"    {median(total) / 1000:7.1f}  {name.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--baseline", metavar="SRC", help="another tether's src/ to compare with")
    args = ap.parse_args()
    tether_bin = shutil.which("tether")
    true_bin = shutil.which("true") or "/bin/true"
    cmds: list[tuple[str, list[str]]] = [
        ("python3 -c pass", [PYTHON, "-c", "pass"]),
        ("timeout 10 true", ["timeout", "10", "true"]),
        ("python3 -m tether.cli run -- true", [PYTHON, "-m", "tether.cli", "run", "--", "true"]),
    ]
    if tether_bin is not None:
        cmds.insert(2, (f"tether run -- true ({tether_bin})", [tether_bin, "run", "--", "true"]))
        cmds.insert(3, (f"tether --version ({tether_bin})", [tether_bin, "--version"]))
        # pyenv shims are shell scripts that re-exec: time the real entry point too.
        if "shims" in tether_bin:
            found = subprocess.run(
                ["pyenv", "which", "tether"], capture_output=True, text=True, check=False
            ).stdout.strip()
            if found and found != tether_bin:
                cmds.insert(3, (f"tether run -- true ({found})", [found, "run", "--", "true"]))
                cmds.insert(4, (f"tether --version ({found})", [found, "--version"]))
    if args.baseline:
        cmds.append(("baseline: python3 -m tether.cli run -- true", cmds[-1][1]))
    # The same run through click (loaded first, so the fast path stands aside):
    # what the click-free path saves, from this tree alone.
    via_click = "import click; from tether.cli import main; main()"
    cmds.append(("tether run -- true via click", [PYTHON, "-c", via_click, "run", "--", "true"]))
    cmds.append(("python3 -c 'import tether.cli'", [PYTHON, "-c", "import tether.cli"]))
    cmds.append((f"{true_bin}", [true_bin]))
    cached = [
        c for c in cmds if c[0] == "python3 -c pass" or "run -- true" in c[0] or "--version" in c[0]
    ]
    cmds += [(f"{n} (pyc cached)", a) for n, a in cached]
    envs = {n: (CACHED_ENV if n.endswith("(pyc cached)") else None) for n, _ in cmds}
    for name, _ in cmds:
        if name.startswith("baseline"):
            # Its own bytecode cache: the prefix mirrors source paths, so the two never mix.
            env = dict(envs[name] or os.environ)
            env["PYTHONPATH"] = os.path.abspath(args.baseline)
            envs[name] = env

    times: dict[str, list[float]] = {n: [] for n, _ in cmds}
    cpu: dict[str, list[float]] = {n: [] for n, _ in cmds}
    rcs: dict[str, set[int]] = {n: set() for n, _ in cmds}
    for name, argv in cmds:  # warm-up: page cache, .pyc
        wall(argv, envs[name])
    for _ in range(args.repeat):
        for name, argv in cmds:
            elapsed, used, rc = wall(argv, envs[name])
            times[name].append(elapsed)
            cpu[name].append(used)
            rcs[name].add(rc)

    print(
        f"wall time to exit status, median of {args.repeat} (ms); python {sys.version.split()[0]}"
    )
    width = max(len(n) for n, _ in cmds)
    base = median(times["python3 -c pass"])
    print(
        f"{'command':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}  {'vs python':>17}  "
        f"{'CPU':>6}  {'CPU vs py':>9}  rc"
    )
    print("-" * (width + 75))
    cpu_base = median(cpu["python3 -c pass"])
    for name, _ in cmds:
        t = times[name]
        print(
            f"{name:<{width}}  {median(t) * 1000:8.1f}  {min(t) * 1000:8.1f}  "
            f"{max(t) * 1000:8.1f}  "
            f"{(median(t) - base) * 1000:+16.1f}  {median(cpu[name]) * 1000:6.1f}  "
            f"{(median(cpu[name]) - cpu_base) * 1000:+9.1f}  "
            f"{','.join(map(str, sorted(rcs[name])))}"
        )
    print(
        "\ntargets (informational, issue 15): `tether run -- true` at most 20 ms more than "
        "`python3 -c pass`, `tether --version` at most 10 ms more"
    )
    cbase = median(times["python3 -c pass (pyc cached)"])
    for name, _ in cmds:
        if "tether run" in name or "tether.cli run" in name or "--version" in name:
            target = 0.010 if "--version" in name else 0.020
            extra = median(times[name]) - (cbase if name.endswith("(pyc cached)") else base)
            print(
                f"  {name:<{width}} {extra * 1000:+7.1f} ms  (target <= +{target * 1000:.0f} ms)  "
                f"{pass_miss(extra <= target)}"
            )
    print(
        f"  (pyc cached) rows are compared with `python3 -c pass (pyc cached)`; "
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')} here"
    )
    print_import_times(args.repeat)
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
