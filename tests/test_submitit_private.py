"""The private submitit name the toolkit relies on (hpt_hpc/launch/submitit_private.py),
pinned to the installed submitit: an upgrade fails here first, and a real local job's
controller runs that module (what ``status`` and ``cancel`` of a local job look for)."""
import time

import psutil
import submitit

from hpt_hpc.launch.executors import executor_named, make_executor
from hpt_hpc.launch.options import SchedulerOptions
from hpt_hpc.launch.submitit_private import LOCAL_CONTROLLER, SUBMITIT_VERSION


def test_the_private_name_is_the_installed_submitits(tmp_path):
    assert submitit.__version__ == SUBMITIT_VERSION, \
        "submitit changed: check LOCAL_CONTROLLER in hpt_hpc/launch/submitit_private.py"
    executor = make_executor("local", tmp_path, SchedulerOptions(), "pinned")
    executor.update_parameters(local_setup=["true"])  # a shell runs the controller
    job = executor.submit(time.sleep, 30)
    local = executor_named("local")
    try:
        deadline = time.time() + 20
        while local.states(str(tmp_path), [job.job_id])[job.job_id] != "RUNNING":
            assert time.time() < deadline, "the controller never showed up"
            time.sleep(0.2)
        family = [psutil.Process(int(job.job_id))] + \
            psutil.Process(int(job.job_id)).children()
        assert any(LOCAL_CONTROLLER in p.cmdline() for p in family)
    finally:
        cancelled, failed = local.cancel(str(tmp_path), [job.job_id])
    assert cancelled == [job.job_id] and not failed
    assert local.states(str(tmp_path), [job.job_id])[job.job_id] == "INTERRUPTED"
