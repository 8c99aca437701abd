"""Linux kernel seams: procfs, prctl, pidfd and cgroup v2 file I/O.

Everything that talks to the kernel directly (ctypes included) lives here so
the rest of tether reads as policy, not plumbing.
"""
