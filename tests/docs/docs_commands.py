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
  record     the Python record reader of docs/formats.md parses a record that mobiletune-pack
             wrote: magic, CRC, length, label, name and pixels

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


def check_record_reader():
    """Run the docs/formats.md reader on a record of a database mobiletune-pack writes."""
    snippet = next((lines for language, _, lines in code_blocks(os.path.join(SOURCE, "docs", "formats.md"))
                    if language == "python" and any("MTR1" in l for l in lines)), None)
    if snippet is None:
        fail("docs/formats.md", "the Python record reader is gone (this test runs it)")
        return
    import lmdb
    import numpy as np
    from PIL import Image
    with tempfile.TemporaryDirectory(prefix="mt-docs-") as tmp:
        photos = os.path.join(tmp, "photos")
        for label, name in enumerate(("ants", "bees")):
            os.makedirs(os.path.join(photos, name))
            pixels = np.full((40, 50, 3), 60 + 100 * label, np.uint8)
            Image.fromarray(pixels).save(os.path.join(photos, name, "one.png"))
        out = os.path.join(tmp, "db")
        subprocess.run([PACK, "--size", "32", "--no-progress", photos, out], check=True,
                       capture_output=True)
        with lmdb.open(out, readonly=True, lock=False) as env, env.begin() as txn:
            v = bytes(txn.get(b"0000000001"))
        scope = {"v": v}
        try:
            exec("\n".join(snippet), scope)
        except Exception as e:  # any error in the documented code is the finding
            fail("docs/formats.md", f"the Python record reader fails on a packed record: {e!r}")
            return
        if scope.get("name") != "bees/one.png" or scope.get("label") != 1 or scope.get("h") != 32:
            fail("docs/formats.md", f"the reader gives name {scope.get('name')!r}, label "
                                    f"{scope.get('label')!r}, h {scope.get('h')!r} for bees/one.png")
        image = np.frombuffer(scope["pixels"], "u1").reshape(scope["h"], scope["w"], 3)
        if not (image == 160).all():
            fail("docs/formats.md", "the reader's pixels are not the packed ones (all 160)")


def main():
    for program in (MOBILETUNE, PACK):
        if not os.path.exists(program):
            sys.exit(f"docs_commands: {program} is not built")
    programs = Programs()
    check_links()
    run_summaries(check_commands(programs))
    check_record_reader()
    for message in failures:
        print("FAIL", message, file=sys.stderr)
    print("FAILED" if failures else "PASSED", f"({len(failures)} problem(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
