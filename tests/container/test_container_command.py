"""`--container`: the task command, binds, runtime choice and the errors before submission.

The runtimes here are real (the dev Apptainer of containers/dev, also under the name
`singularity`); no job is submitted (tests/slurm/test_container.py runs real jobs).
"""
import os
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import load_config
from hpt_hpc.errors import HptError
from hpt_hpc.launch.container import bind_specs, find_runtime, plan_paths, \
    folder_before_placeholders, preflight, task_python
from hpt_hpc.launch.options import SchedulerOptions, build_options
from hpt_hpc.plan import plan_stages
from hpt_hpc.launch.commands import launch
from hpt_hpc.launch.executors import executor_named, make_executor
from tiny import write_tiny_config

REPO = Path(__file__).resolve().parents[2]
DEV_RUNTIME = REPO / "containers" / "dev" / "bin" / "apptainer"


def runtime_dir(tmp_path: Path, *names: str) -> Path:
    """A PATH folder holding the dev runtime under each of ``names``."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).symlink_to(DEV_RUNTIME)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.sif"
    path.write_bytes(b"stand-in: these tests never start the image")
    return path


def test_task_command_binds_folder_and_paths_and_adds_nv_only_with_gpus(tmp_path, image,
                                                                          monkeypatch):
    monkeypatch.setenv("PATH", f"{runtime_dir(tmp_path, 'apptainer')}:{os.environ['PATH']}")
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    options = SchedulerOptions(container=str(image), container_binds=[str(data),
                               str(data / "train"), f"{data}:/data:ro"])
    cmd = shlex.split(task_python(options, "slurm", tmp_path / "logs" / "%j"))
    assert cmd[:2] == [str(tmp_path / "bin" / "apptainer"), "exec"]
    assert "--nv" not in cmd
    binds = cmd[cmd.index("--bind") + 1].split(",")
    # the data folder once (train is inside it), the log folder up to %j (created), the map
    assert binds == [str(data), str(tmp_path / "logs"), f"{data}:/data:ro"]
    assert (tmp_path / "logs").is_dir()
    assert cmd[-2:] == [str(image), "python3"]
    gpu = SchedulerOptions(container=str(image), gpus_per_node=4)
    assert shlex.split(task_python(gpu, "slurm", tmp_path / "logs"))[2] == "--nv"


def test_singularity_is_used_when_apptainer_is_absent(tmp_path, image, monkeypatch):
    bin_dir = runtime_dir(tmp_path, "singularity")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert find_runtime() == str(bin_dir / "singularity")
    cmd = shlex.split(task_python(SchedulerOptions(container=str(image)), "local", tmp_path))
    assert cmd[0] == str(bin_dir / "singularity")
    import subprocess
    out = subprocess.run([cmd[0], "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "version" in out.stdout, out.stderr
    both = runtime_dir(tmp_path, "apptainer")  # apptainer wins when both exist
    assert find_runtime() == str(both / "apptainer")


def test_missing_runtime_image_or_bind_are_clear_errors(tmp_path, image, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HptError, match="apptainer or singularity on PATH.*module load"):
        task_python(SchedulerOptions(container=str(image)), "slurm", tmp_path)
    monkeypatch.setenv("PATH", str(runtime_dir(tmp_path, "apptainer")))
    with pytest.raises(HptError, match="needs singularity on PATH"):
        task_python(SchedulerOptions(container=str(image), container_runtime="singularity"),
                    "slurm", tmp_path)
    with pytest.raises(HptError, match="'/nope/img.sif' does not exist.*containers/build.sh"):
        task_python(SchedulerOptions(container="/nope/img.sif"), "slurm", tmp_path)
    with pytest.raises(HptError, match="apptainer pull img.sif docker://x/y"):
        task_python(SchedulerOptions(container="docker://x/y"), "slurm", tmp_path)
    with pytest.raises(HptError, match="--container-bind '/absent:/d'.*does not exist"):
        task_python(SchedulerOptions(container=str(image), container_binds=["/absent:/d"]),
                    "slurm", tmp_path)
    with pytest.raises(HptError, match="use --executor slurm or local, not debug"):
        preflight(SchedulerOptions(container=str(image)), executor_named("debug").in_process)
    monkeypatch.setenv("APPTAINER_CLEANENV", "1")
    with pytest.raises(HptError, match="APPTAINER_CLEANENV.*SLURM_"):
        task_python(SchedulerOptions(container=str(image)), "slurm", tmp_path)


def test_local_executor_runs_tasks_through_the_container_command(tmp_path, image,
                                                                  monkeypatch):
    monkeypatch.setenv("PATH", f"{runtime_dir(tmp_path, 'apptainer')}:{os.environ['PATH']}")
    executor = make_executor("local", tmp_path / "logs", SchedulerOptions(
        container=str(image)), "x")
    assert executor._executor.python.split()[:2] == [str(tmp_path / "bin" / "apptainer"),
                                                      "exec"]
    assert make_executor("local", tmp_path / "logs", SchedulerOptions(), "x") \
        ._executor.python != executor._executor.python


def test_plan_paths_cover_data_outputs_init_and_sqlite_store(tmp_path, mnist_tree):
    init = tmp_path / "start.pt"
    init.write_bytes(b"x")
    cfg = load_config(str(write_tiny_config(
        tmp_path, {"mnist": mnist_tree},
        {"base": {"dataset": "mnist", "init": str(init)},
         "target": {"dataset": "mnist", "init": "stage:base"}})))
    plans = plan_stages(cfg)
    paths = plan_paths(plans, f"sqlite:///{tmp_path}/store/mlflow.db")
    assert set(paths) == {mnist_tree, tmp_path / "out", init, tmp_path / "store"}
    assert plan_paths(plans, "http://127.0.0.1:5000") == [mnist_tree, tmp_path / "out", init]
    assert folder_before_placeholders(tmp_path / "a" / "%j" / "b") == tmp_path / "a"
    (tmp_path / "out").mkdir()
    assert bind_specs([tmp_path / "out", tmp_path, "/"]) == [str(tmp_path)]


def test_profile_and_flag_binds_add_up(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text("container: /images/hpt.sif\ncontainer_binds: [/a]\n")
    monkeypatch.setenv("HPT_SLURM_PROFILES", str(tmp_path))
    opts = build_options("p", container_binds=["/b"])
    assert (opts.container, opts.container_binds) == ("/images/hpt.sif", ["/a", "/b"])
    assert build_options("p", container="/x.sif").container == "/x.sif"


def test_cli_rejects_a_missing_image_before_anything_is_created(tmp_path, mnist_tree,
                                                                monkeypatch):
    monkeypatch.setenv("PATH", f"{runtime_dir(tmp_path, 'apptainer')}:{os.environ['PATH']}")
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {"target": {"dataset": "mnist"}})
    result = CliRunner().invoke(cli, ["launch", "--config", str(cfg), "--stage", "target",
                                      "--executor", "local", "--container",
                                      str(tmp_path / "absent.sif")])
    assert result.exit_code == 2, result.output
    assert "absent.sif' does not exist" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(HptError, match="not debug"):
        launch(str(cfg), ["target"], SchedulerOptions(executor="debug",
                                                      container=str(cfg)))
