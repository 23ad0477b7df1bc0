"""This machine's CPU as a run sees it: how many torch threads each process gets, and whether bf16 pays.

One split of the cores for everything that runs processes side by side: a parallel launcher's jobs, DDP's CPU
processes, a search's workers (mnist_arch/commands/search.py). Light on purpose (torch, no Lightning): the search
command imports it before it knows whether anything will train.
"""
import os
from typing import Optional

import torch
from hydra.core.hydra_config import HydraConfig

from mnist_arch.config.schema import Config


def set_threads(conf: Config) -> None:
    """Torch threads per process: `threads`, else the CPUs Slurm gave this task (SLURM_CPUS_PER_TASK: a
    cluster without CPU binding still shows every core to every job), else the cores shared out between
    the jobs a parallel launcher (hydra.launcher.n_jobs) and the CPU processes of DDP run at once; else
    torch's default."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        torch.set_num_threads(conf.threads or int(os.environ["SLURM_CPUS_PER_TASK"]))
        return
    share = 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
    if isinstance(n_jobs, int) and n_jobs != 1:
        share = cpu_cores() if n_jobs < 0 else n_jobs
    if conf.trainer.accelerator == "cpu" and isinstance(conf.trainer.devices, int):
        share *= conf.trainer.devices
    threads = conf.threads or threads_each(share)
    if threads:
        torch.set_num_threads(threads)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_each(processes: int) -> Optional[int]:
    """Torch threads for each of `processes` sharing this machine's cores (at least one); None for a process alone
    (torch's default). The one split: parallel jobs, DDP's CPU processes, a search's workers."""
    return max(1, cpu_cores() // processes) if processes > 1 else None


def auto_precision(accelerator: str) -> str:
    """trainer.precision=auto: bf16-mixed where it was measured to pay, else 32-true. It pays on a CPU that
    computes bf16 natively (avx512_bf16 or AMX) in a process with one torch thread (a search or race worker's
    share of the cores): the project's CPU steps 1.14-1.34x faster there, while with two threads bf16 is
    0.87-1.12x (its kernels did not use the second thread; BENCHMARKS.md, "bf16 on the CPU"). Elsewhere
    32-true: more threads, a CPU that would emulate bf16, a GPU (not measured)."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    cpu = getattr(torch, "cpu", None)
    native = any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))
    return "bf16-mixed" if on_cpu and native and torch.get_num_threads() == 1 else "32-true"
