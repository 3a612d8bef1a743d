"""The main job's worker processes (``demo --jobs``): the same results as one process at the same thread count,
stages started only after what they need, and a failed stage named with its log and the others stopped."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cbgan_ext import pipeline


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    res.pop("minutes")
    text = json.dumps(res).replace(str(out), "OUT")
    res = json.loads(text)
    for section in ("bagan", "softlabel"):  # the annotator file's digest covers its recorded wall-clock times
        for r in res[section]["eval"].values():
            r["eval_key"].pop("annotator_sha256")
    return res


def test_parallel_job_gives_the_serial_results(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    pipeline.run(str(serial), preset="tiny", seed=0, threads=1, jobs=1, progress=False)
    pipeline.run(str(parallel), preset="tiny", seed=0, threads=2, jobs=2, progress=False)  # 1 thread a worker
    assert not (serial / "logs").exists()
    logs = sorted(os.listdir(parallel / "logs"))
    assert "annotator.log" in logs and "softlabel_softlabel-gan.log" in logs and "bagan_augment.log" in logs
    a, b = _results(serial), _results(parallel)
    assert a["results"]["cbgan"]["histogram"] == b["results"]["cbgan"]["histogram"]
    assert a == b


def _stage(name, needs, fn, *args):
    return (name, tuple(needs), fn, args)


def test_run_stages_follows_needs_and_names_a_failure(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("x")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    # b copies a's output: started before a finished, it would fail
    stages = [_stage("b", ["a"], shutil.copyfile, str(a), str(b)), _stage("a", [], shutil.copyfile, str(src), str(a))]
    pipeline.run_stages(stages, jobs=2, log_dir=str(tmp_path / "logs"))
    assert b.read_text() == "x"

    missing = str(tmp_path / "missing.txt")
    with pytest.raises(RuntimeError, match=r"stage broken failed \(.*FileNotFoundError.*\); its log: .*broken\.log"):
        pipeline.run_stages([_stage("broken", [], os.remove, missing)], jobs=1, log_dir=str(tmp_path / "logs"))

    with pytest.raises(RuntimeError, match="stages wait for stages that never run: c needs nowhere"):
        pipeline.run_stages([_stage("c", ["nowhere"], os.getcwd)], jobs=1, log_dir=str(tmp_path / "logs"))


def test_a_failed_stage_stops_the_others(tmp_path):
    t0 = time.time()
    stages = [_stage("slow", [], time.sleep, 120), _stage("broken", [], os.remove, str(tmp_path / "missing"))]
    with pytest.raises(RuntimeError, match="stage broken failed"):
        pipeline.run_stages(stages, jobs=2, log_dir=str(tmp_path / "logs"))
    assert time.time() - t0 < 60  # not left to sleep its 120 s


def _write_pid_and_sleep(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


def test_workers_stop_when_the_job_is_killed(tmp_path):
    """SIGKILL runs no cleanup in the job: its workers must still stop (they hold their runs' locks)."""
    pid_file = tmp_path / "worker.pid"
    code = ("import sys; from cbgan_ext import pipeline; import test_jobs\n"
            "if __name__ == '__main__':\n"
            f"    pipeline.run_stages([('w', (), test_jobs._write_pid_and_sleep, ({str(pid_file)!r},))], jobs=1, "
            f"log_dir={str(tmp_path / 'logs')!r})\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    job = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    job.send_signal(signal.SIGKILL)
    job.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its killed job")
