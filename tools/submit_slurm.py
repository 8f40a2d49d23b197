#!/usr/bin/env python
"""Submit ``train_net.py`` to SLURM (submitit): N nodes x G GPUs, requeued on preemption / timeout,
resumed from the last checkpoint, one log folder per job.

One SLURM task per node; each runs ``train_net.py --num-gpus G --num-machines N --machine-rank
<node> --dist-url tcp://<first node of the job>:<port> --resume`` (Detectron2's launcher then
starts G processes on its node). ``--resume`` is always passed: a fresh job starts from
``MODEL.WEIGHTS`` (nothing in OUTPUT_DIR yet), a requeued one from OUTPUT_DIR's last checkpoint
(``SOLVER.CHECKPOINT_PERIOD`` sets how much a preemption can lose). On preemption or timeout,
submitit requeues the job (at most ``--max-requeues`` timeouts); logs and submitit's files go to
``--job-dir/<job id>/``.

    python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --time-min 4320 \\
        --config-file configs/ade20k/mtaclip_R50_bs16_160k.yaml OUTPUT_DIR output/mtaclip_r50
    python tools/submit_slurm.py --dry-run ...     # print the sbatch script, submit nothing
    python tools/submit_slurm.py --cluster local --nodes 2 --gpus-per-node 1 ...
        # this machine, one process per "node" (CPU: gloo), through submitit's local executor

Everything after the options (``--config-file ...``, ``--eval-only``, ``KEY VALUE`` overrides) goes
to ``train_net.py`` unchanged; the launcher options above are set here and may not be given.
"""

import argparse
import logging
import os
import shlex
import subprocess
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
RESERVED = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url", "--resume")
logger = logging.getLogger("mta_clip.submit_slurm")


def dist_port(job_id: str) -> int:
    """A TCP port for the job's rendezvous, 20000..39999, the same on every node of a job."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 20000


class TrainJob:
    """The callable submitit runs in every task (one per node); requeued by ``checkpoint``."""

    def __init__(self, train_args, gpus_per_node: int, python: str = sys.executable):
        self.train_args = list(train_args)
        self.gpus_per_node = gpus_per_node
        self.python = python

    def command(self, machine_rank: int, num_machines: int, host: str, port: int):
        return [
            self.python,
            TRAIN_NET,
            "--num-gpus",
            str(self.gpus_per_node),
            "--num-machines",
            str(num_machines),
            "--machine-rank",
            str(machine_rank),
            "--dist-url",
            f"tcp://{host}:{port}",
            "--resume",
            *self.train_args,
        ]

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        # rank 0's host: SLURM's first node of the job (local executor: this machine's name)
        cmd = self.command(env.global_rank, env.num_tasks, env.hostnames[0], dist_port(env.job_id))
        print(
            f"[submit_slurm] job {env.job_id} task {env.global_rank}/{env.num_tasks} on {env.hostname}: "
            f"{shlex.join(cmd)}",
            flush=True,
        )
        code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        if code != 0:
            raise RuntimeError(f"train_net.py exited with status {code} (job {env.job_id}, task {env.global_rank})")
        return code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption / timeout: requeue the same job; ``--resume`` makes it
        continue from OUTPUT_DIR's last checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainJob(self.train_args, self.gpus_per_node, self.python))


def _parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--nodes", type=int, default=1, help="machines (SLURM nodes)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (processes) per node")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node (default: 10 per GPU)")
    parser.add_argument("--mem-gb", type=int, default=None, help="memory per node")
    parser.add_argument("--time-min", type=int, default=3 * 24 * 60, help="time limit per run of the job")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--qos", default=None)
    parser.add_argument("--constraint", default=None)
    parser.add_argument("--job-name", default="mta_clip")
    parser.add_argument(
        "--job-dir",
        default=os.path.join("output", "slurm"),
        help="submitit's files and the logs, one folder per job id inside",
    )
    parser.add_argument("--max-requeues", type=int, default=10, help="timeouts after which the job is not requeued")
    parser.add_argument(
        "--cluster",
        choices=("slurm", "local"),
        default="slurm",
        help="local: this machine through submitit's local executor (tests, debugging)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    args, train_args = parser.parse_known_args(argv)
    for name in ("nodes", "gpus_per_node", "time_min"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    taken = [a for a in train_args if a.split("=", 1)[0] in RESERVED]
    if taken:
        parser.error(f"{', '.join(taken)}: set by this tool from --nodes / --gpus-per-node and the job")
    if "--config-file" not in train_args and not any(a.startswith("--config-file=") for a in train_args):
        parser.error("train_net.py needs --config-file CONFIG")
    return args, train_args


def slurm_parameters(args) -> dict:
    """Keyword arguments of submitit's SLURM executor (its sbatch names)."""
    params = {
        "job_name": args.job_name,
        "nodes": args.nodes,
        "ntasks_per_node": 1,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task or 10 * args.gpus_per_node,
        "time": args.time_min,
        "signal_delay_s": 120,
    }
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.mem_gb:
        params["mem"] = f"{args.mem_gb}GB"
    return params


def sbatch_script(args) -> str:
    """The sbatch file submitit would submit (``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = os.path.abspath(os.path.join(args.job_dir, "%j"))
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(folder)])
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(args))


def submit(args, train_args):
    import submitit

    folder = os.path.join(args.job_dir, "%j")
    if args.cluster == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(nodes=1, tasks_per_node=args.nodes, timeout_min=args.time_min)
    else:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(**slurm_parameters(args))
    job = executor.submit(TrainJob(train_args, args.gpus_per_node))
    print(
        f"[submit_slurm] submitted job {job.job_id}: {args.nodes} node(s) x {args.gpus_per_node} GPU(s); "
        f"logs in {os.path.join(args.job_dir, str(job.job_id))}",
        flush=True,
    )
    return job


def main(argv=None):
    args, train_args = _parse(argv)
    if args.dry_run:
        print(sbatch_script(args))
        cmd = TrainJob(train_args, args.gpus_per_node).command("<node index>", args.nodes, "<first node>", "<port>")
        print(f"# each task runs: {shlex.join(cmd)}")
        return None
    return submit(args, train_args)


if __name__ == "__main__":
    main()
