"""`hpt-hpc launch --container` on the real dev cluster with a real Apptainer image.

The image is built here, offline, by containers/build.sh from containers/dev/hostenv.def
(the bookworm base image of containers/dev/install.sh plus this virtual environment on
PATH); the environment itself is bound in. Apptainer is the dev runtime of containers/dev.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from hpt_hpc import __version__
from hpt_hpc.launch.options import build_options
from hpt_hpc.launch.record import JobEntry, LaunchRecord
from hpt_hpc.launch.executors import executor_named
from tiny import write_tiny_config

pytestmark = pytest.mark.slurm
# The probe below is unpickled inside the image, where this test module is not importable.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[2]
DEV_BIN = REPO / "containers" / "dev" / "bin"
BASE_IMAGE = Path(os.environ.get("HPT_DEV_IMAGES", "/var/lib/hpt-hpc/images")) / \
    "hpt-dev-base.sif"
IMAGE_MARKER = "/etc/hpt-hpc-image"  # written by hostenv.def's %post, absent on the host


def host_env_binds() -> list:
    """This checkout (editable install), the venv and its base interpreter (unless it is
    Debian's /usr one, which the bookworm image has too)."""
    binds = [str(REPO), sys.prefix]
    base = Path(sys.base_prefix).resolve()
    if base != Path("/usr"):
        binds.append(str(base))
    return binds


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    if not BASE_IMAGE.is_file() or not (DEV_BIN / "apptainer").exists():
        pytest.fail(f"{BASE_IMAGE} is missing: run `bash containers/dev/install.sh` (as root)"
                    f" first", pytrace=False)
    out = tmp_path_factory.mktemp("image") / "hpt-hostenv.sif"
    env = {**os.environ, "PATH": f"{DEV_BIN}:{os.environ['PATH']}"}
    build = subprocess.run(
        ["bash", str(REPO / "containers" / "build.sh"), "--def",
         str(REPO / "containers" / "dev" / "hostenv.def"), "--out", str(out), "--",
         "--notest", "--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", f"VENV={sys.prefix}"],
        env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert build.returncode == 0, build.stderr[-3000:]
    return out


@pytest.fixture
def on_path(monkeypatch):
    """The dev runtime first on PATH (as `module load apptainer` would do)."""
    monkeypatch.setenv("PATH", f"{DEV_BIN}:{os.environ['PATH']}")


def apptainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEV_BIN / "apptainer"), *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_image_labels_test_and_runscript(image):
    labels = apptainer("inspect", str(image)).stdout
    assert f"org.opencontainers.image.version: {__version__}" in labels
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert f"org.opencontainers.image.revision: {commit}" in labels
    binds = ",".join(host_env_binds())
    assert apptainer("test", "--bind", binds, str(image)).returncode == 0
    run = apptainer("run", "--bind", binds, str(image), "--version")
    assert run.stdout.strip() == f"hpt-hpc, version {__version__}", run.stderr


def probe(marker: str) -> dict:
    """What a task sees: the image's marker file and the job's environment."""
    import submitit
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    keys = ("APPTAINER_CONTAINER", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS",
            "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "MLFLOW_TRACKING_URI")
    return {"marker": Path(marker).read_text().strip() if Path(marker).exists() else None,
            **{k: os.environ.get(k) for k in keys}}


def test_every_task_runs_in_the_image_with_the_job_environment(slurm_cluster, image, on_path,
                                                               submitit_folder, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/mlflow.db")
    options = build_options("dev", tasks_per_node=2, container=str(image),
                            container_binds=host_env_binds())
    job = executor_named("slurm").submitter(submitit_folder, options, "probe").submit(
        probe, IMAGE_MARKER)
    results = job.results()
    assert [r["SLURM_PROCID"] for r in results] == ["0", "1"]
    for rank, r in enumerate(results):
        assert r["marker"].startswith(f"hpt-hpc-hostenv {__version__}"), r
        assert r["APPTAINER_CONTAINER"] == str(image)
        assert r["SLURM_JOB_ID"] == str(job.job_id) and r["SLURM_NTASKS"] == "2"
        assert (r["RANK"], r["WORLD_SIZE"]) == (str(rank), "2")
        assert r["MASTER_ADDR"] and r["MASTER_PORT"]
        assert r["MLFLOW_TRACKING_URI"] == "sqlite:////shared/mlflow.db"
    assert not Path(IMAGE_MARKER).exists(), "the marker must exist only inside the image"


def test_cli_launch_trains_a_stage_inside_the_image(slurm_cluster, image, on_path, tmp_path,
                                                    mnist_tree):
    """Data, outputs, logs and the sqlite MLflow store are bound without being named."""
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                            {"target": {"dataset": "mnist", "variant": "scratch"}},
                            checkpoint={"every": 1000}, name="ctr",
                            tracking={"enabled": True, "system_metrics": False})
    binds = [a for b in host_env_binds() for a in ("--container-bind", b)]
    cli = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "hpt-hpc"), "launch", "--config", str(cfg), "--stage",
         "target", "--executor", "slurm", "--profile", "dev", "--container", str(image),
         *binds], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    assert f"every task runs in {image}" in cli.stdout
    record = LaunchRecord.load(tmp_path / "out")
    job = record.job(record.jobs[0])
    result = job.result()
    assert result["steps"] == 6 and Path(result["checkpoint"]).is_file()
    assert Path(result["checkpoint"]).is_relative_to(tmp_path / "out")
    script = Path(job.paths.submission_file).read_text()
    assert f"{DEV_BIN / 'apptainer'} exec --bind " in script and str(image) in script
    bound = script.split("--bind ", 1)[1].split()[0].split(",")
    assert {str(mnist_tree), str(tmp_path / "out")} <= set(bound), bound
    from mlflow import MlflowClient
    client = MlflowClient(record.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("ctr").experiment_id],
                              "tags.`hpt.label` = 'target'")
    assert runs and runs[0].data.tags["slurm.job_id"] == str(job.job_id)
    assert runs[0].info.status == "FINISHED"
    # the job that ends the pipeline run ran in the image too (no SLURM clients there)
    closer = record.job(JobEntry("close", record.closer_job_id))
    assert slurm_cluster.wait(closer, timeout=120) == "COMPLETED", closer.stderr()
    assert closer.result() == "FINISHED" and str(image) in \
        Path(closer.paths.submission_file).read_text()
    assert client.get_run(record.pipeline_run_id).info.status == "FINISHED"


def test_sweep_runs_every_unit_inside_the_image(slurm_cluster, image, on_path, tmp_path,
                                                mnist_tree):
    """`hpt-hpc sweep --container`: upstream, pretraining and evaluation tasks all run
    through the image, with the sweep's data, outputs and MLflow store bound."""
    from hpt_hpc.experiments.sweep import finished_units, run_sweep
    from hpt_hpc.plan.experiment import load_experiment as load_sweep_spec
    from tiny import write_tiny_experiment
    path = write_tiny_experiment(
        tmp_path, {"mnist": mnist_tree},
        {"s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}},
        tracking=True, name="ctr-sweep", references=False)
    spec = load_sweep_spec(str(path))
    options = build_options("dev", executor="slurm", container=str(image),
                            container_binds=host_env_binds())
    _, record = run_sweep(spec, options)
    assert [e.stage for e in record.jobs] == ["upstream-base", "pretrain", "eval"]
    for entry in record.jobs:
        job = record.job(entry)
        job.result()
        script = Path(job.paths.submission_file).read_text()
        assert f"{DEV_BIN / 'apptainer'} exec --bind " in script and str(image) in script
    assert finished_units(spec, record.tracking_uri) == {
        "upstream-base", "HPT-mnist-2st-seed0", "HPT-mnist-2st-seed0-linear"}
