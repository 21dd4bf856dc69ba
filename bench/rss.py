"""Peak memory of every process a system uses: a sampler thread reads ``/proc/<pid>/status``
(VmRSS, VmHWM) of the benchmark process's descendants and of any extra roots (e.g. a server the
system did not start itself), and names each process by its program."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from typing import Any


def proc_status(pid: int | str) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of one process; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def proc_name(pid: int) -> str:
    """A readable role for a process: ``python -m X`` -> ``X``, a script -> its file name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if "-m" in argv[:-1]:
        return "python -m " + argv[argv.index("-m") + 1]
    exe = Path(argv[0]).name
    if exe.startswith("python") and len(argv) > 1:
        return Path(argv[1]).name
    return exe


def descendants(roots: set[int]) -> set[int]:
    """The given pids and all their descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found = {pid for pid in roots if pid in parent}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


class RssSampler:
    """Follows the processes other than this one (descendants and extra roots) every ``period`` s."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.extra_roots: set[int] = set()
        self.peak_hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.peak_sum_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        me = os.getpid()
        pids = descendants({me} | self.extra_roots) - {me}
        total = 0
        for pid in pids:
            st = proc_status(pid)
            if not st:
                continue
            total += st.get("VmRSS", 0)
            self.peak_hwm[pid] = max(self.peak_hwm.get(pid, 0), st.get("VmHWM", 0))
            if pid not in self.names:
                self.names[pid] = proc_name(pid)
        self.peak_sum_rss_kib = max(self.peak_sum_rss_kib, total)

    def report(self) -> dict[str, Any]:
        by_name: dict[str, dict[str, int]] = {}
        for pid, hwm in self.peak_hwm.items():
            entry = by_name.setdefault(self.names.get(pid, "?"), {"processes": 0, "max_vmhwm_mib": 0})
            entry["processes"] += 1
            entry["max_vmhwm_mib"] = max(entry["max_vmhwm_mib"], round(hwm / 1024))
        return {
            "other_processes": by_name,
            # Sum of VmRSS over the other processes, sampled: counts shared memory once per process.
            "other_peak_sum_rss_mib": round(self.peak_sum_rss_kib / 1024),
        }


def self_peak_rss_mib() -> dict[str, float]:
    hwm = proc_status("self").get("VmHWM", 0)
    return {
        "vmhwm_mib": round(hwm / 1024, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
