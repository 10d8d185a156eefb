"""A small sweep (2 algorithms x 2 bit widths x 2 seeds, MLP, 2 epochs on the digits) on the
local process pool and on a real Dask LocalCluster: identical rows, each trial once, a
killed worker's trial rerun, a restart that skips finished trials, the CLI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from edgedfa import cli
from edgedfa.sweep.executors import LocalPool
from edgedfa.sweep.results import FIGURES, RESULTS, TIMING, read_rows
from edgedfa.sweep.run import run_sweep
from edgedfa.sweep.spec import grid_points, load_spec, plan
from edgedfa.sweep.trial import remove_orphan_trial_dirs, run_trial, trial_dir_prefix

SPEC = """\
[sweep]
seeds = [0, 1]
emulate_steps = 1

[base.model]
arch = "mlp"
[base.data]
dataset = "digits"
[base.train]
epochs = 2
batch_size = 64

[axes]
"train.algo" = ["bp", "sdfa"]
"numerics.bits" = [4, 8]
"""
N_TRIALS = 8


def comparable(rows):
    """Rows without how they ran (time, worker), by fingerprint."""
    return {r["fingerprint"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "small.toml"
    path.write_text(SPEC)
    return str(path)


@pytest.fixture(scope="module")
def local(spec, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("local") / "sweep")
    result = run_sweep(spec, out, LocalPool(2), log=quiet)
    return out, result


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


def test_the_local_pool_runs_every_trial_once(local):
    out, result = local
    rows = read_rows(os.path.join(out, RESULTS))
    assert result.ran == result.planned == N_TRIALS and not result.failed and result.reused == 0
    assert len(rows) == N_TRIALS and len({r["fingerprint"] for r in rows}) == N_TRIALS
    assert len({r["worker"] for r in rows}) == 2  # both processes worked
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["bit_exact"] is True
        assert r["cycles_per_step"] > 0 and r["bytes_per_step"] > 0 and r["weight_memory_bits"] > 0
        run_dir = os.path.join(out, r["run_dir"])
        assert {"checkpoint.npz", "metrics.json", "config.toml", "model.onnx", "emulate.json", "trial.json"} <= set(
            os.listdir(run_dir))
        assert json.load(open(os.path.join(run_dir, "trial.json")))["fingerprint"] == r["fingerprint"]
    by = {(r["point"]["train.algo"], r["point"]["numerics.bits"]): r for r in rows}
    assert by[("bp", 4)]["weight_memory_bits"] * 2 == by[("bp", 8)]["weight_memory_bits"]  # same weights, half the bits
    header = open(os.path.join(out, "results.csv")).readline().strip().split(",")
    assert header[:4] == ["fingerprint", "label", "train.algo", "numerics.bits"]


def test_the_same_sweep_on_a_dask_cluster_gives_identical_rows(local, spec, dask_cluster, tmp_path):
    from edgedfa.sweep.executors import DaskCluster

    cluster, _ = dask_cluster
    out = str(tmp_path / "dask")
    result = run_sweep(spec, out, DaskCluster(cluster.scheduler_address), log=quiet)
    assert result.ran == N_TRIALS and not result.failed
    rows = read_rows(os.path.join(out, RESULTS))
    assert all(r["worker"].startswith("tcp://") for r in rows)
    assert comparable(rows) == comparable(read_rows(os.path.join(local[0], RESULTS)))


def held_run_trial(gate, held):
    """run_trial for Dask workers, but attempt n of a trial in ``held`` (fingerprint -> attempts to hold)
    first writes its worker to gate/<fingerprint>-<n>.started, and the first ``held[fp]`` attempts
    then wait (up to 2 minutes) for the test to create gate/<fingerprint>-<n>.go."""

    def trial_fn(trial):  # nested: cloudpickle ships it by value, so workers need not import this module
        import distributed

        fp = trial["fingerprint"]
        if fp in held:
            where = os.path.join(gate, f".{os.getpid()}-{threading.get_ident()}")
            with open(where, "w") as fh:
                json.dump({"pid": os.getpid(), "worker": distributed.get_worker().address}, fh)
            n = 1
            while True:  # a link is atomic and never replaces: each attempt claims its own number
                try:
                    os.link(where, os.path.join(gate, f"{fp}-{n}.started"))
                    break
                except FileExistsError:
                    n += 1
            os.remove(where)
            deadline = time.monotonic() + 120
            while n <= held[fp] and not os.path.exists(os.path.join(gate, f"{fp}-{n}.go")) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
        return run_trial(trial)

    return trial_fn


def started(gate, fp, attempt, timeout=120):
    """Where attempt ``attempt`` of trial ``fp`` runs ({"pid", "worker"}), once it has started."""
    path = os.path.join(gate, f"{fp}-{attempt}.started")
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - t0 < timeout, f"attempt {attempt} of trial {fp} never started"
        time.sleep(0.01)
    with open(path) as fh:
        return json.load(fh)


def wait_until(condition, what, timeout=120):
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_a_killed_dask_worker_gets_its_trial_rerun(local, spec, dask_cluster, tmp_path, monkeypatch):
    from edgedfa.sweep import executors

    cluster, client = dask_cluster
    planned = load_spec(spec)
    victim_fp = plan(planned, grid_points(planned))[0]["fingerprint"]
    gate = str(tmp_path)
    monkeypatch.setattr(executors, "run_trial", held_run_trial(gate, {victim_fp: 1}))  # its first attempt waits
    out, done = str(tmp_path / "killed"), {}
    sweep = threading.Thread(target=lambda: done.setdefault(
        "result", run_sweep(spec, out, executors.DaskCluster(cluster.scheduler_address), log=quiet)))
    sweep.start()
    victim = started(gate, victim_fp, 1)  # the worker is inside the trial, held there until it dies
    os.kill(victim["pid"], signal.SIGKILL)
    sweep.join(timeout=300)
    rows = read_rows(os.path.join(out, RESULTS))
    assert done["result"].ran == N_TRIALS and not done["result"].failed
    assert len(rows) == len({r["fingerprint"] for r in rows}) == N_TRIALS  # each trial once
    assert comparable(rows) == comparable(read_rows(os.path.join(local[0], RESULTS)))
    rerun = started(gate, victim_fp, 2, timeout=0)
    (row,) = [r for r in rows if r["fingerprint"] == victim_fp]
    assert rerun["worker"] != victim["worker"] and row["worker"] == rerun["worker"]  # finished elsewhere
    assert victim["worker"] not in client.scheduler_info(n_workers=-1)["workers"]


def test_a_finished_trial_whose_dask_worker_dies_before_its_result_is_fetched_is_rerun_once(
        spec, dask_cluster, tmp_path, monkeypatch):
    from edgedfa.sweep import executors

    cluster, _ = dask_cluster
    planned = load_spec(spec)
    first, lost = plan(planned, grid_points(planned))[:2]
    gate, fp = str(tmp_path), lost["fingerprint"]
    monkeypatch.setattr(executors, "run_trial", held_run_trial(gate, {fp: 2}))
    with executors.DaskCluster(cluster.scheduler_address) as ex:
        trials = ex.run([first, lost])
        assert next(trials)[0] is first  # the driver records it while the other one finishes
        worker = started(gate, fp, 1)
        open(os.path.join(gate, f"{fp}-1.go"), "w").close()
        state = next(s for key, s in ex.client.futures.items() if fp in key)
        wait_until(lambda: state.status == "finished", "the client knows the trial finished")
        os.kill(worker["pid"], signal.SIGKILL)  # its result dies with it, unread
        wait_until(lambda: state.status != "finished", "the client knows the result is lost")
        threading.Timer(0.5, lambda: open(os.path.join(gate, f"{fp}-2.go"), "w").close()).start()
        trial, result, error = next(trials)  # waits for the rerun
        assert trial is lost and error is None and result["fingerprint"] == fp
        assert result["timing"]["worker"] == started(gate, fp, 2, timeout=0)["worker"] != worker["worker"]
        assert list(trials) == []  # once
    assert not os.path.exists(os.path.join(gate, f"{fp}-3.started"))


def test_a_killed_pool_process_gets_its_trial_rerun(local, spec, tmp_path):
    pool, out, done = LocalPool(2), str(tmp_path / "killed-pool"), {}
    sweep = threading.Thread(target=lambda: done.setdefault("result", run_sweep(spec, out, pool, log=quiet)))
    sweep.start()
    t0 = time.monotonic()
    while not pool.pids() and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    time.sleep(0.3)
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGKILL)
    sweep.join(timeout=300)
    assert done["result"].ran == N_TRIALS and not done["result"].failed
    left = [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"edgedfa-trial-{socket.gethostname()}-{victim}-")]
    assert left == []  # the killed process's trial directory went with the trials after it
    assert comparable(read_rows(os.path.join(out, RESULTS))) == comparable(read_rows(os.path.join(local[0], RESULTS)))


BROKEN_TRIAL = {"fingerprint": "0" * 16, "label": "broken"}  # fails at once on a worker: no settings


def test_a_trial_run_in_this_process_leaves_its_threads_and_environment_alone(local, spec):
    import numba

    planned = load_spec(spec)
    trial = plan(planned, grid_points(planned))[0]
    env, threads = dict(os.environ), numba.get_num_threads()
    result = run_trial(trial)
    assert dict(os.environ) == env and numba.get_num_threads() == threads
    assert numba.njit(lambda x: x + 1)(1) == 2  # numba still compiles here (NUMBA_NUM_THREADS untouched)
    row = next(r for r in read_rows(os.path.join(local[0], RESULTS)) if r["fingerprint"] == trial["fingerprint"])
    assert {k: result["figures"].get(k) for k in FIGURES} == {k: row[k] for k in FIGURES}


def test_a_stop_while_a_reply_is_read_still_stops_its_worker():
    def stopped():
        raise KeyboardInterrupt

    pool = LocalPool(1)
    pool._dispatch(BROKEN_TRIAL)
    (conn,) = pool._busy
    conn.recv = stopped  # SIGTERM lands while the driver reads the worker's reply
    with pytest.raises(KeyboardInterrupt):
        next(pool.run([]))
    workers = pool.pids()
    assert len(workers) == 1  # still the pool's to stop
    pool.close()
    with pytest.raises(ProcessLookupError):
        os.kill(workers[0], 0)


def test_a_pool_worker_that_died_after_its_reply_is_replaced():
    pool = LocalPool(1)
    (trial, result, error), = pool.run([BROKEN_TRIAL])
    assert error and result is None
    (proc, _), = pool._idle
    os.kill(proc.pid, signal.SIGKILL)  # dies idle, as if right after sending its reply
    proc.join()
    again = dict(BROKEN_TRIAL, fingerprint="1" * 16)
    assert [t for t, _, _ in pool.run([again])] == [again]  # a new worker ran it, no BrokenPipeError
    assert pool._idle[0][0].pid != proc.pid
    pool.close()


def test_a_pool_worker_ignores_ctrl_c_from_its_first_instant_and_outlives_its_driver():
    pool = LocalPool(1)
    pool._dispatch(BROKEN_TRIAL)
    started = pool.pids()
    os.kill(started[0], signal.SIGINT)  # Ctrl-C reaches the process group while the worker still starts
    _, _, error = next(pool.run([]))
    proc, conn = pool._idle[0]
    assert [proc.pid] == started and error.startswith("internal error KeyError")  # it lived to run the trial
    conn.send(BROKEN_TRIAL)
    conn.close()  # the driver is gone before the reply: the worker ends quietly
    proc.join(timeout=60)
    assert proc.exitcode == 0


def test_a_restart_runs_only_the_missing_trials(local, spec, tmp_path):
    out = str(tmp_path / "restart")
    shutil.copytree(local[0], out)
    path = os.path.join(out, RESULTS)
    lines = open(path).read().splitlines(keepends=True)
    with open(path, "w") as fh:  # three trials lost, the last one torn mid-write
        fh.writelines(lines[:5])
        fh.write(lines[5][:40])
    result = run_sweep(spec, out, LocalPool(2), log=quiet)
    assert (result.reused, result.ran) == (5, 3)
    rows = read_rows(path)
    assert len(rows) == N_TRIALS and comparable(rows) == comparable(read_rows(os.path.join(local[0], RESULTS)))
    assert run_sweep(spec, out, LocalPool(1), log=quiet).ran == 0


def test_a_sweep_dir_of_another_spec_is_refused(local, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(Exception, match="holds a sweep of another spec"):
        run_sweep(str(other), local[0], LocalPool(1), log=quiet)


def test_the_cli_sweep_stops_on_sigterm_and_a_rerun_finishes(local, spec, tmp_path):
    out = tmp_path / "cli"
    argv = [sys.executable, "-m", "edgedfa.cli", "sweep", spec, "-o", str(out), "--workers", "2", "--no-report"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / RESULTS).exists() or not (out / RESULTS).stat().st_size:
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "edgedfa: interrupted"
    assert "Traceback" not in err
    first = len(read_rows(str(out / RESULTS)))
    assert 1 <= first < N_TRIALS
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{N_TRIALS - first} trial(s) run, {first} already done" in done.stdout
    assert comparable(read_rows(str(out / RESULTS))) == comparable(read_rows(os.path.join(local[0], RESULTS)))


def test_the_cli_writes_the_report_and_names_failed_trials(local, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace('"numerics.bits" = [4, 8]', '"layers.nosuch.weight_bits" = [4]')
                   .replace("seeds = [0, 1]", "seeds = [0]"))
    code = cli.main(["sweep", str(bad), "-o", str(tmp_path / "bad"), "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "2 trial(s) failed" in err and "nosuch" in err and len(err.strip().splitlines()) == 1
    assert len(read_rows(str(tmp_path / "bad" / "errors.jsonl"))) == 2
    code = cli.main(["report", local[0], "-o", str(tmp_path / "rep")])
    assert code == 0 and (tmp_path / "rep" / "summary.md").exists()
    assert {"pareto-cycles.png", "pareto-bytes.svg", "pareto-weight-memory.png", "configurations.csv"} <= set(
        os.listdir(tmp_path / "rep"))


OPTUNA_SPEC = """\
[sweep]
method = "optuna"
trials = 4
batch = 2
sampler_seed = 3
emulate_steps = 0
objective = "max test_accuracy"
constraints = ["weight_memory_bits <= 400000"]

[base.train]
epochs = 1
batch_size = 128

[axes]
"numerics.bits" = [4, 6, 8]
"train.lr_shift" = { low = 3, high = 6 }
"""


def test_an_optuna_search_is_replayed_on_restart(tmp_path):
    pytest.importorskip("optuna")
    spec = tmp_path / "optuna.toml"
    spec.write_text(OPTUNA_SPEC)
    out = tmp_path / "search"
    first = run_sweep(str(spec), str(out), LocalPool(2), log=quiet)
    rows = read_rows(str(out / RESULTS))
    assert first.ran == 4 and len({r["fingerprint"] for r in rows}) == 4
    assert all(r["point"]["numerics.bits"] in (4, 6, 8) and 3 <= r["point"]["train.lr_shift"] <= 6 for r in rows)
    lines = (out / RESULTS).read_text().splitlines(keepends=True)
    (out / RESULTS).write_text("".join(lines[:2]))  # the second round is lost
    again = run_sweep(str(spec), str(out), LocalPool(2), log=quiet)
    assert (again.reused, again.ran) == (2, 2)  # the same asks: the lost trials, nothing new
    assert comparable(read_rows(str(out / RESULTS))) == comparable(rows)


def test_a_trial_removes_the_directories_of_dead_trial_processes_only(tmp_path):
    """A SIGKILLed worker cannot remove its temporary directory: the next trial on the host does;
    directories of live processes, other hosts and the older naming stay."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = socket.gethostname()
    dead = tmp_path / f"edgedfa-trial-{host}-{proc.pid}-abc"
    live = tmp_path / f"edgedfa-trial-{host}-{os.getpid()}-def"
    other = tmp_path / f"edgedfa-trial-elsewhere-{proc.pid}-ghi"
    old = tmp_path / "edgedfa-trial-x1y2z3"
    for d in (dead, live, other, old):
        (d / "run").mkdir(parents=True)
        (d / "run" / "metrics.json").write_text("{}")
    assert remove_orphan_trial_dirs(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists() and other.exists() and old.exists()
    assert trial_dir_prefix() == f"edgedfa-trial-{host}-{os.getpid()}-"
