import json
import os
import shlex

import pytest

from tests.conftest import ROOT, load_tool

submit_slurm = load_tool("submit_slurm")


def test_dry_run_prints_the_sbatch_script(capsys, tmp_path):
    submit_slurm.main(
        [
            "--dry-run",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--partition",
            "gpu",
            "--time-min",
            "600",
            "--job-dir",
            str(tmp_path),
            "--config-file",
            "configs/ade20k/mtaclip_R50_bs16_160k.yaml",
            "OUTPUT_DIR",
            "output/x",
        ]
    )
    text = capsys.readouterr().out
    lines = set(text.splitlines())
    for expected in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=600",
        "#SBATCH --cpus-per-task=40",
        "#SBATCH --job-name=mta_clip",
        "#SBATCH --signal=USR2@120",
    ):
        assert expected in lines, expected
    assert f"--output {tmp_path}/%j/%j_%t_log.out" in text  # one log folder per job id, one log per task
    task = next(line for line in text.splitlines() if line.startswith("# each task runs: "))
    argv = shlex.split(task[len("# each task runs: ") :])
    assert argv[1] == os.path.join(ROOT, "train_net.py")
    assert argv[argv.index("--num-gpus") + 1] == "4" and argv[argv.index("--num-machines") + 1] == "2"
    assert argv[argv.index("--machine-rank") + 1] == "<node index>"
    assert argv[argv.index("--dist-url") + 1] == "tcp://<first node>:<port>"
    assert "--resume" in argv and argv[-4:] == [
        "--config-file",
        "configs/ade20k/mtaclip_R50_bs16_160k.yaml",
        "OUTPUT_DIR",
        "output/x",
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--num-gpus", "2"], "--num-gpus"),
        (["--dist-url=tcp://x:1"], "--dist-url"),
        ([], "needs --config-file"),
    ],
)
def test_rejects_launcher_options_and_missing_config(bad, message, capsys):
    with pytest.raises(SystemExit):
        config = ["--config-file", "c.yaml"] if message != "needs --config-file" else []
        submit_slurm.main(["--dry-run", *config, *bad])
    assert message in capsys.readouterr().err


def test_each_task_gets_its_machine_rank_and_the_first_node_as_rendezvous():
    job = submit_slurm.TrainJob(["--config-file", "c.yaml"], gpus_per_node=8)
    port = submit_slurm.dist_port("12345")
    assert 20000 <= port < 40000 and port == submit_slurm.dist_port("12345") != submit_slurm.dist_port("12346")
    cmd = job.command(machine_rank=3, num_machines=4, host="node07", port=port)
    assert cmd[cmd.index("--machine-rank") + 1] == "3" and cmd[cmd.index("--num-machines") + 1] == "4"
    assert cmd[cmd.index("--dist-url") + 1] == f"tcp://node07:{port}" and "--resume" in cmd
    # preemption / timeout: submitit requeues the same callable (resumes through --resume)
    delayed = job.checkpoint()
    assert isinstance(delayed.function, submit_slurm.TrainJob) and delayed.function.train_args == job.train_args
    assert delayed.function.command(0, 4, "h", 1) == job.command(0, 4, "h", 1)


def _submit_local(tmp_path, out_dir, max_iter):
    args = [
        "--cluster",
        "local",
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--time-min",
        "10",
        "--job-dir",
        str(tmp_path / "jobs"),
        "--config-file",
        os.path.join(ROOT, "configs/toy/mask2former_toy.yaml"),
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "DATASETS.TEST",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        str(out_dir),
    ]
    job = submit_slurm.main(args)
    job.results()  # raises if a task failed
    return job


def test_local_two_process_run_then_resume(tmp_path, monkeypatch):
    """Two submitit tasks = two machines of one CPU process each (gloo); a second job (as a requeued
    one) resumes from the first one's checkpoint."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out_dir = tmp_path / "train"
    job = _submit_local(tmp_path, out_dir, 1)
    logs = sorted((tmp_path / "jobs" / str(job.job_id)).glob("*_log.out"))
    assert len(logs) == 2, logs
    for rank, log in enumerate(logs):
        text = log.read_text()
        assert f"--num-machines 2 --machine-rank {rank} --dist-url tcp://" in text
    assert (out_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    job = _submit_local(tmp_path, out_dir, 2)
    text = "".join(p.read_text() for p in (tmp_path / "jobs" / str(job.job_id)).glob("*_log.*"))
    assert "Starting training from iteration 1" in text
    with open(out_dir / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f if line.strip()]
    assert iterations == [0, 1]
