#!/usr/bin/env python3
"""ctest docs_commands: the commands and snippets in README.md and docs/*.md still work when pasted.

  links      every relative Markdown link points at a file that exists
  commands   every line of every ```sh block: the programs exist (and scripts are executable);
             `build/mobiletune SUB` is a command its --help lists and every option given to it is
             one of SUB's options; `--set section.key=value` names a real config option;
             `--config FILE` exists; mobiletune-pack and launch/mpirun.sh options are their own
             (what follows mpirun.sh's `--` is checked as a command of its own); `sbatch FILE`
             exists. Usage synopses ([optional] parts) are checked without their brackets' content.
  summary    the documented `build/mobiletune summary` lines run and exit 0
  workflow   the README's pack -> train -> eval -> predict on 8 tiny photos (frozen.ini with
             --set overrides: 32x32, no weights, 1 epoch); then the Python readers of
             docs/formats.md (a packed record: name, label, pixels) and docs/checkpoints.md (the
             checkpoint just written, and its checksum snippet) run on what was written

A failure names the file and line and what to fix. Exit 0 pass, 1 fail.
"""
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

SOURCE = os.environ.get("MT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
BUILD = os.environ.get("MT_BUILD_DIR", os.path.join(SOURCE, "build"))
MOBILETUNE = os.path.join(BUILD, "mobiletune")
PACK = os.environ.get("MT_PACK", os.path.join(BUILD, "data-prep", "mobiletune-pack"))
failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def doc_files():
    return [os.path.join(SOURCE, "README.md")] + sorted(glob.glob(os.path.join(SOURCE, "docs", "*.md")))


def relative(path):
    return os.path.relpath(path, SOURCE)


def code_blocks(path):
    """(language, first line number, lines) of each fenced block."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        if line.startswith("```"):
            if language is None:
                language, start, lines = line[3:].strip(), number + 1, []
            else:
                blocks.append((language, start, lines))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def help_text(*argv):
    run = subprocess.run(list(argv) + ["--help"], capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def options_in(text):
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


class Programs:
    """What the built programs and the launch script accept, read from their --help."""

    def __init__(self):
        top = help_text(MOBILETUNE)
        listing = top.split("commands:", 1)[1] if "commands:" in top else ""
        self.commands = set(re.findall(r"^  ([a-z]+)\s", listing, re.M))
        self.command_options = {c: options_in(help_text(MOBILETUNE, c)) for c in self.commands}
        self.config_keys = set()
        section = None
        for line in help_text(MOBILETUNE, "train").split("\n"):
            header = re.match(r"^\[(\w+)\]$", line)
            key = re.match(r"^  ([a-z_0-9]+)\s{2,}\S+\s+default", line)
            if header:
                section = header.group(1)
            elif key and section:
                self.config_keys.add(f"{section}.{key.group(1)}")
        self.pack_options = options_in(help_text(PACK))
        self.mpirun_options = options_in(help_text(os.path.join(SOURCE, "launch", "mpirun.sh")))
        if not self.commands or not self.config_keys or not self.pack_options:
            sys.exit("docs_commands: could not read the programs' --help (build first?)")


def strip_synopsis(line):
    """Drop a trailing comment and the [optional] parts of a usage synopsis."""
    line = re.sub(r"\s+#.*$", "", line)
    while re.search(r"\[[^\[\]]*\]", line):
        line = re.sub(r"\[[^\[\]]*\]", "", line)
    return line.strip()


def check_options(where, program, args, allowed):
    for arg in args:
        if arg.startswith("-") and not re.match(r"^-\d", arg) and arg != "--":
            name = arg.split("=", 1)[0]
            if name not in allowed:
                fail(where, f"`{program}` has no option {name} (its --help lists "
                            f"{', '.join(sorted(allowed))}): fix the doc or the program")


def check_command(where, words, programs):
    # `VAR=value program ...`: the environment for the program, which is checked as usual
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if not words:
        return
    program, args = words[0], words[1:]
    if program in ("build/mobiletune", "mobiletune"):
        if not args or args[0] not in programs.commands:
            fail(where, f"`{' '.join(words[:2])}`: not a mobiletune command "
                        f"(commands: {', '.join(sorted(programs.commands))})")
            return
        command = args[0]
        check_options(where, f"mobiletune {command}", args[1:], programs.command_options[command])
        for flag, value in zip(args, args[1:]):
            if flag == "--set" and "=" in value:
                key = value.split("=", 1)[0]
                if key not in programs.config_keys:
                    fail(where, f"--set {key}: no such config option (docs/config.md lists them)")
            if flag == "--config" and not os.path.exists(os.path.join(SOURCE, value)):
                fail(where, f"--config {value}: no such file in the repository")
    elif program in ("build/data-prep/mobiletune-pack", "mobiletune-pack"):
        check_options(where, "mobiletune-pack", args, programs.pack_options)
    elif program == "launch/mpirun.sh":
        split = args.index("--") if "--" in args else len(args)
        check_options(where, "launch/mpirun.sh", args[:split], programs.mpirun_options)
        check_command(where, args[split + 1:], programs)
    elif program == "sbatch":
        files = [a for a in args if not a.startswith("-")]
        if not files or not os.path.exists(os.path.join(SOURCE, files[0])):
            fail(where, f"sbatch {' '.join(args)}: the job script is not in the repository")
    elif "/" in program:
        path = os.path.join(SOURCE, program)
        if not os.path.exists(path):
            fail(where, f"{program}: no such file in the repository")
        elif not os.access(path, os.X_OK):
            fail(where, f"{program}: not executable (chmod +x, and commit the mode)")


def check_links():
    for path in doc_files():
        text = open(path, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file = target.split("#", 1)[0]
            if not os.path.exists(os.path.join(os.path.dirname(path), file)):
                fail(relative(path), f"the link ({target}) points at a file that does not exist")


def check_commands(programs):
    summaries = []
    for path in doc_files():
        for language, start, lines in code_blocks(path):
            if language != "sh":
                continue
            for offset, line in enumerate(lines):
                where = f"{relative(path)}:{start + offset}"
                text = strip_synopsis(line)
                for command in filter(None, (c.strip() for c in text.split("&&"))):
                    try:
                        words = shlex.split(command)
                    except ValueError as e:
                        fail(where, f"cannot be parsed as a shell command: {e}")
                        continue
                    check_command(where, words, programs)
                    if words[:2] == ["build/mobiletune", "summary"]:
                        summaries.append((where, words))
    return summaries


def run_summaries(summaries):
    for where, words in summaries:
        run = subprocess.run([MOBILETUNE] + words[1:], capture_output=True, text=True, timeout=120)
        if run.returncode != 0 or "params" not in run.stdout.lower():
            fail(where, f"`{' '.join(words)}` exited {run.returncode}: {run.stderr.strip()[:300]}")


def python_block(doc, marker):
    """The lines of the ```python block of docs/DOC that contains MARKER."""
    for language, _, lines in code_blocks(os.path.join(SOURCE, "docs", doc)):
        if language == "python" and any(marker in line for line in lines):
            return lines
    fail(f"docs/{doc}", f"the Python snippet with {marker!r} is gone (this test runs it)")
    return None


def run_snippet(doc, lines, scope):
    try:
        exec("\n".join(lines), scope)
        return True
    except Exception as e:  # any error in the documented code is the finding
        fail(f"docs/{doc}", f"the Python snippet fails: {e!r}")
        return False


def check_workflow():
    """The README's workflow on 8 tiny photos: pack with splits, train (frozen, 1 epoch, 32x32, no
    weights), eval and predict as documented; then the docs' Python readers of a packed record
    (docs/formats.md) and of the checkpoint (docs/checkpoints.md)."""
    import lmdb
    import numpy as np
    from PIL import Image
    with tempfile.TemporaryDirectory(prefix="mt-docs-") as tmp:
        photos, colors = os.path.join(tmp, "photos"), {}
        for label, name in enumerate(("ants", "bees")):
            os.makedirs(os.path.join(photos, name))
            for i in range(4):
                colors[f"{name}/{i}.png"] = 40 + 100 * label + 10 * i
                pixels = np.full((40, 50, 3), colors[f"{name}/{i}.png"], np.uint8)
                Image.fromarray(pixels).save(os.path.join(photos, name, f"{i}.png"))
        data, run_dir = os.path.join(tmp, "data"), os.path.join(tmp, "run")
        steps = [
            [PACK, "--split", "train=0.5,val=0.25,test=0.25", "--size", "32", "--no-progress",
             photos, data],
            [MOBILETUNE, "train", "--config", os.path.join(SOURCE, "configs/cats_vs_dogs/frozen.ini"),
             "--no-progress"] + [a for kv in (
                f"data.train={data}/train", f"data.val={data}/val", f"data.test={data}/test",
                "data.batch_size=2", "model.input_size=32", "model.weights=none",
                f"output.run_dir={run_dir}", "output.tensorboard=false", "train.epochs=1")
                for a in ("--set", kv)],
            [MOBILETUNE, "eval", "--checkpoint", f"{run_dir}/best.safetensors", "--db", f"{data}/test"],
            [MOBILETUNE, "predict", "--checkpoint", f"{run_dir}/best.safetensors",
             os.path.join(photos, "bees", "0.png")],
        ]
        for argv in steps:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=240)
            if run.returncode != 0:
                fail("README.md (Using it)", f"`{' '.join(argv[:2])} ...` exited {run.returncode}: "
                                             f"{(run.stderr or run.stdout).strip()[-400:]}")
                return
        if "0.png" not in run.stdout:
            fail("README.md (Using it)", f"predict does not name its image:\n{run.stdout}")

        record_reader = python_block("formats.md", "MTR1")
        if record_reader:
            with lmdb.open(f"{data}/train", readonly=True, lock=False) as env, env.begin() as txn:
                v = bytes(txn.get(b"0000000000"))
            scope = {"v": v}
            if run_snippet("formats.md", record_reader, scope):
                name = scope.get("name")
                if name not in colors or scope.get("label") != (name or "").startswith("bees"):
                    fail("docs/formats.md", f"the reader gives name {name!r}, label "
                                            f"{scope.get('label')!r}")
                else:
                    image = np.frombuffer(scope["pixels"], "u1").reshape(scope["h"], scope["w"], 3)
                    if not (image == colors[name]).all():
                        fail("docs/formats.md", f"the reader's pixels are not {name}'s")

        checkpoint_reader = python_block("checkpoints.md", "__metadata__")
        if checkpoint_reader:
            documented = "runs/cats_vs_dogs/frozen/best.safetensors"
            lines = [l.replace(documented, f"{run_dir}/best.safetensors") for l in checkpoint_reader]
            if not any(documented in l for l in checkpoint_reader):
                fail("docs/checkpoints.md", f"the reader no longer opens {documented}")
            scope = {}
            if run_snippet("checkpoints.md", lines, scope):
                tensors = scope.get("tensors", {})
                kernels = [k for k in tensors if k.endswith("kernel")]
                if not kernels or not scope.get("meta"):
                    fail("docs/checkpoints.md", f"the reader finds {len(tensors)} tensors, "
                                                f"no kernel or no metadata")
                # the checksum snippet runs on the reader's variables and passes on a good file
                checksums = python_block("checkpoints.md", "zlib.crc32")
                if checksums and not run_snippet("checkpoints.md", checksums, scope):
                    fail("docs/checkpoints.md", "the checksum snippet fails on a good checkpoint")
                # The safetensors package (scripts/install-deps.sh puts it in .venv) as the judge.
                try:
                    from safetensors.numpy import load_file
                except ImportError:
                    load_file = None
                if load_file:
                    want = load_file(f"{run_dir}/best.safetensors")
                    wrong = sorted(k for k in want if k not in tensors or
                                   not np.array_equal(tensors[k], want[k]))
                    if wrong or len(tensors) != len(want):
                        fail("docs/checkpoints.md", f"the reader's tensors differ from the "
                                                    f"safetensors package's: {wrong[:5]}")


def main():
    for program in (MOBILETUNE, PACK):
        if not os.path.exists(program):
            sys.exit(f"docs_commands: {program} is not built")
    programs = Programs()
    check_links()
    run_summaries(check_commands(programs))
    check_workflow()
    for message in failures:
        print("FAIL", message, file=sys.stderr)
    print("FAILED" if failures else "PASSED", f"({len(failures)} problem(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
