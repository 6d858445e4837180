#!/usr/bin/env python3
"""The launch scripts' GPU side, checked on a machine without GPUs.

    launch_checks.py CASE    (CASE: mpirun_gpu | slurm_gpu; env from ctest: MT_BUILD_DIR, ...)

  mpirun_gpu  launch/mpirun.sh --gpu-per-rank with real Open MPI ranks: each rank sees the entry
              local-rank modulo count of the given GPUs; no GPU at all is a clear error; --dry-run
              passes NCCL_*, MT_* and CUDA_VISIBLE_DEVICES on to every rank.
  slurm_gpu   the files' requests (GPUs per node = tasks per node; none for the CPU file); then on
              a real one-node Slurm without GPUs (../shared/tools/slurm_local.sh), one job that
              submits the README's scripts with `sbatch --test-only`: train-cpu.sbatch is
              accepted, train-gpu.sbatch is refused for its GPU request, launch/slurm/submit.sh
              picks the script from the backend and explains the refusal; the CPU script refuses
              a cuda run before any rank starts; the GPU script's body warns when ranks would
              share GPUs and starts its ranks with train.backend = cuda (which fail here,
              quickly, for want of a GPU).

(The 2-rank train / SIGTERM -> checkpoint -> resume / rank failure runs of train-cpu.sbatch are
tests/trainer's trainer_slurm.)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import local_slurm  # noqa: E402  (tests/common)
from script_exit import fail, skip  # noqa: E402  (tests/common)

SOURCE = os.path.abspath(os.environ.get("MT_SOURCE_DIR",
                                        os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.environ.get("MT_BUILD_DIR", os.path.join(SOURCE, "build"))
MOBILETUNE = os.path.join(BUILD, "mobiletune")
SLURM_LOCAL = os.path.join(os.environ.get("MT_SHARED_DIR", os.path.join(SOURCE, "..", "shared")),
                           "tools", "slurm_local.sh")
MPIRUN_SH = os.path.join(SOURCE, "launch", "mpirun.sh")
SLURM_DIR = os.path.join(SOURCE, "launch", "slurm")


def run(command, env=None, timeout=120):
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run(command, env=full_env, capture_output=True, text=True,
                            timeout=timeout)
    result.output = result.stdout + result.stderr
    return result


def case_mpirun_gpu(tmp):
    if not shutil.which("mpirun"):
        skip("mpirun not found (Open MPI)")
    mpi_env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    # Three ranks on one node given two GPUs: local ranks 0, 1, 2 take the first, the second and
    # the first again (the trainer's own rule, here applied by the launcher).
    probe = ["sh", "-c", 'echo "rank $OMPI_COMM_WORLD_RANK gpu $CUDA_VISIBLE_DEVICES"']
    result = run([MPIRUN_SH, "-n", "3", "-N", "3", "--gpu-per-rank", "--"] + probe,
                 env=dict(mpi_env, CUDA_VISIBLE_DEVICES="7,9"))
    seen = dict(re.findall(r"^rank (\d) gpu (\S*)$", result.stdout, re.M))
    if result.returncode != 0 or seen != {"0": "7", "1": "9", "2": "7"}:
        fail(f"--gpu-per-rank with CUDA_VISIBLE_DEVICES=7,9 gave {seen} (want 0:7 1:9 2:7), "
             f"exit {result.returncode}:\n{result.output}")
    print(f"mpirun.sh --gpu-per-rank: ranks 0,1,2 of GPUs 7,9 see {seen['0']},{seen['1']},"
          f"{seen['2']}")
    # Without the option every rank sees what it was given (the trainer picks its own GPU).
    result = run([MPIRUN_SH, "-n", "2", "-N", "2", "--"] + probe,
                 env=dict(mpi_env, CUDA_VISIBLE_DEVICES="7,9"))
    if sorted(re.findall(r"gpu (\S*)$", result.stdout, re.M)) != ["7,9", "7,9"]:
        fail(f"without --gpu-per-rank the ranks should see 7,9:\n{result.output}")
    # No GPU given and none on this host: a clear refusal, not a rank on a wrong device.
    if shutil.which("nvidia-smi") is None:
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env.update(mpi_env)
        result = subprocess.run([MPIRUN_SH, "-n", "1", "--gpu-per-rank", "--", "true"], env=env,
                                capture_output=True, text=True, timeout=120)
        if result.returncode == 0 or "no GPU on" not in result.stdout + result.stderr:
            fail(f"--gpu-per-rank without GPUs should fail naming it:\n{result.stdout}"
                 f"{result.stderr}")
        print("mpirun.sh --gpu-per-rank without a GPU: refused, "
              f"'{(result.stdout + result.stderr).strip().splitlines()[0][:80]}...'")
    # The dry run shows the 8-GPU node's command and the variables every rank gets.
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as f:
        f.write("gpu1 slots=8\ngpu2 slots=8\n")
    result = run([MPIRUN_SH, "--dry-run", "-H", hosts, "-N", "8", "-g", "--", MOBILETUNE, "train"],
                 env={"NCCL_SOCKET_IFNAME": "ib0", "MT_CUDA_DEBUG": "1",
                      "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    for words in ("-np 16", "--map-by ppr:8:node", "-x NCCL_SOCKET_IFNAME", "-x MT_CUDA_DEBUG",
                  "-x CUDA_VISIBLE_DEVICES", "-x NCCL_DEBUG",
                  f"{os.path.join(SOURCE, 'launch', 'one-gpu.sh')} {MOBILETUNE} train"):
        if words not in result.stdout:
            fail(f"mpirun.sh --dry-run for 2 nodes x 8 GPUs does not show '{words}':\n"
                 f"{result.output}")
    print("mpirun.sh --dry-run, 2 nodes x 8 GPUs: " + result.stdout.strip()[:160] + " ...")


def free_port_pair():
    port = local_slurm.free_port_pair()
    if port is None:
        fail("no free pair of ports for the local Slurm")
    return port


# Each check of the Slurm job: a name, the shell lines, run in the job with the repository as the
# working folder (so the lines are the README's), their output in the job log between markers.
SLURM_CHECKS = [
    ("cpu_test_only", "sbatch --test-only launch/slurm/train-cpu.sbatch"),
    ("gpu_test_only", "sbatch --test-only launch/slurm/train-gpu.sbatch"),
    ("gpu_two_nodes", "sbatch --test-only --nodes=2 launch/slurm/train-gpu.sbatch"),
    ("submit_cpu", "launch/slurm/submit.sh --test-only"),
    ("submit_cuda", 'MT_ARGS="--set train.backend=cuda" launch/slurm/submit.sh --test-only'),
    ("cpu_refuses_cuda_args", 'MT_ARGS="--set train.backend=cuda" bash launch/slurm/train-cpu.sbatch'),
    ("cpu_refuses_cuda_config", 'MT_CONFIG="$CUDA_CONFIG" bash launch/slurm/train-cpu.sbatch'),
    # as if the job held one GPU for its two tasks, in Slurm's "type:count" form (srun reads the
    # variable too, and asks this GPU-less node for it in vain: only the warning is checked)
    ("gpu_shared", "SLURM_GPUS_PER_NODE=h200:1 bash launch/slurm/train-gpu.sbatch"),
    ("gpu_body", "bash launch/slurm/train-gpu.sbatch"),
]


def sbatch_requests(name):
    """The #SBATCH options of a shipped job file, as {option: value}."""
    requests = {}
    with open(os.path.join(SLURM_DIR, name)) as f:
        for line in f:
            found = re.match(r"^#SBATCH\s+(--[\w-]+)(?:=(\S+))?", line)
            if found:
                requests[found.group(1)] = found.group(2)
    return requests


def case_slurm_gpu(tmp):
    # What the files ask for: the CPU one no GPU at all; the GPU one a GPU for each task of a node
    # (the trainer's local-rank rule then gives each rank its own) and no --gpus-per-task, which
    # Slurm accepts only with a total task count, so `sbatch --nodes=2` would not do.
    cpu, gpu = sbatch_requests("train-cpu.sbatch"), sbatch_requests("train-gpu.sbatch")
    if any("gpu" in option or option == "--gres" for option in cpu):
        fail(f"train-cpu.sbatch asks for GPUs: {cpu}")
    if gpu.get("--gpus-per-node") != gpu.get("--ntasks-per-node") or "--gpus-per-task" in gpu \
            or "--ntasks" in gpu or not gpu.get("--gpus-per-node"):
        fail(f"train-gpu.sbatch should ask --gpus-per-node = --ntasks-per-node and no task total: "
             f"{gpu}")
    print(f"train-gpu.sbatch asks {gpu['--ntasks-per-node']} tasks and "
          f"{gpu['--gpus-per-node']} GPUs per node; train-cpu.sbatch no GPU")
    if not os.path.exists(SLURM_LOCAL):
        skip(f"{SLURM_LOCAL} is absent (../shared/tools)")
    if not os.path.exists(MOBILETUNE):
        fail(f"{MOBILETUNE} is not built")
    cuda_config = os.path.join(tmp, "cuda.ini")
    with open(cuda_config, "w") as f:
        f.write("[data]\nbatch_size = 4\n\n[train]\n; this run wants GPUs\nbackend = cuda  ; here\n"
                "epochs = 1\n")
    cpu_config = os.path.join(tmp, "cpu.ini")
    with open(cpu_config, "w") as f:
        f.write(f"[train]\nbackend = cpu\n[output]\nrun_dir = {tmp}/run\n")
    lines = ["#!/bin/bash", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2",
             "#SBATCH --cpus-per-task=1", f"#SBATCH --output={tmp}/probe-%j.out",
             f"cd {SOURCE}", f"export MT_ROOT={SOURCE} MT_BIN={MOBILETUNE}",
             f"export MT_CONFIG={cpu_config} CUDA_CONFIG={cuda_config}"]
    for name, command in SLURM_CHECKS:
        lines += [f"echo '<<< {name}'", f"( {command} ) 2>&1; echo \">>> {name} rc=$?\""]
    job = os.path.join(tmp, "probe.sbatch")
    with open(job, "w") as f:
        f.write("\n".join(lines) + "\n")
    result = run(["bash", SLURM_LOCAL, job, "120"], timeout=240,
                 env={"SLURM_LOCAL_PORT": str(free_port_pair())})
    if result.returncode == 2 and ("cluster did not come up" in result.output or
                                   "missing /usr/sbin" in result.output):
        skip("Slurm could not start here:\n" + result.output[-2000:])
    if result.returncode != 0:
        fail(f"the probe job failed (exit {result.returncode}):\n{result.output}")
    checks = {}
    for name, _ in SLURM_CHECKS:
        found = re.search(rf"^<<< {name}\n(.*?)^>>> {name} rc=(\d+)$", result.stdout, re.M | re.S)
        if not found:
            fail(f"the probe job did not run the check {name}:\n{result.output}")
        checks[name] = (int(found.group(2)), found.group(1))

    def expect(name, ok, *words):
        rc, output = checks[name]
        if (rc == 0) != ok or any(w not in output for w in words):
            fail(f"{name}: exit {rc}, expected {'0' if ok else 'non-zero'} and the words "
                 f"{list(words)}:\n{output}")
        first = output.strip().splitlines()[-1] if output.strip() else ""
        print(f"{name}: exit {rc}: {first[:150]}")

    expect("cpu_test_only", True, "to start at")
    expect("gpu_test_only", False, "Invalid generic resource (gres) specification")
    expect("gpu_two_nodes", False, "Invalid generic resource (gres) specification")
    expect("submit_cpu", True, "to start at")
    expect("submit_cuda", False, "Invalid generic resource", "no GPUs", "train-cpu.sbatch",
           "--set train.backend=cpu")
    expect("cpu_refuses_cuda_args", False, "reserves no GPUs", "train-gpu.sbatch")
    expect("cpu_refuses_cuda_config", False, "reserves no GPUs", "train-gpu.sbatch")
    expect("gpu_shared", False, "2 ranks per node share 1 GPUs", "--gpus-per-node=2")
    # The GPU script's body in this GPU-less allocation: both ranks start through srun with the
    # cuda backend, which has no device here, and the job step ends non-zero.
    rc, output = checks["gpu_body"]
    if rc == 0 or "train-gpu.sbatch: job" not in output or "cuda" not in output.lower() or \
            "share" in output:
        fail(f"gpu_body: the GPU script's body should start the cuda run and fail here:\n{output}")
    print(f"gpu_body: exit {rc}: " + " | ".join(l for l in output.splitlines()
                                                  if "cuda" in l.lower())[:200])


CASES = {"mpirun_gpu": case_mpirun_gpu, "slurm_gpu": case_slurm_gpu}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print("usage: launch_checks.py " + "|".join(CASES))
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="mt-launch-") as folder:
        CASES[sys.argv[1]](folder)
    print("PASSED")
