#!/usr/bin/env python3
"""ctest architecture_includes: every #include "..." in src/, include/mobiletune/ and data-prep/
points the way docs/architecture.md says (its module table's "May include" column), or is one of
the EXCEPTIONS below, each with its reason.

Also fails when a folder of src/ or a public header belongs to no module of the table (give it a
row or a place in one), when an include names a file that does not exist, and when an exception
is no longer needed (so the list only holds what is true). A failure names the file and line,
the rule, and what to do. Exit 0 pass, 1 fail.
"""
import os
import re
import sys

SOURCE = os.environ.get("MT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
DOC = "docs/architecture.md"

# (including file, included file as written, why this include may point the wrong way)
EXCEPTIONS = [
    ("include/mobiletune/config.h", "mobiletune/optimizer.h",
     "the options hold the optimizer's hyper-parameters (mt_optimizer_config and its enums), "
     "which train's optimizer defines; config otherwise sits below train (the trainer takes a "
     "config), so this one header is the only edge back"),
    ("include/mobiletune/onnx_export.h", "mobiletune/model.h",
     "the ONNX export serializes a built model (its layer list and weights), so this one writer "
     "of src/io sits above src/model, whose Keras import uses src/io's HDF5 reader"),
    ("src/ops/cuda/cuda_module_entry.c", "comm/nccl_comm.h",
     "the CUDA module's one entry table gathers both parts that link CUDA libraries: this "
     "backend and the NCCL communicator of src/comm (src/ops/cuda_module.h)"),
]

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCE_EXTENSIONS = (".c", ".h", ".cu", ".cuh", ".cc", ".cpp")


def read_table():
    """module -> (source folders, public header names, allowed modules), from the doc's table."""
    path = os.path.join(SOURCE, DOC)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    modules = {}
    header = None  # the column names of the table being read, when it is the module table
    in_table = False
    for number, line in enumerate(lines, 1):
        if not line.startswith("|"):
            in_table = header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:  # a table's first row: its column names
            in_table = True
            header = cells if cells and cells[0] == "Module" else None
            continue
        if header is None or set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells))
        try:
            name = row["Module"].strip("`")
            folders = re.findall(r"`([^`]+)`", row["Sources"])
            headers = re.findall(r"`([^`]+)`", row["Public headers"])
            allowed = set(re.findall(r"`([^`]+)`", row["May include"]))
        except KeyError as missing:
            sys.exit(f"{DOC}:{number}: the module table lacks the column {missing}")
        modules[name] = (folders, headers, allowed)
    if not modules:
        sys.exit(f"{DOC}: no module table found (| Module | Sources | Public headers | ... |)")
    for name, (_, _, allowed) in modules.items():
        for other in allowed:
            if other not in modules:
                sys.exit(f"{DOC}: module '{name}' may include '{other}', which is no module")
    return modules


def module_of(relative, modules):
    """The module a repository path belongs to (the longest matching source folder), or None."""
    if relative.startswith("include/mobiletune/"):
        name = relative[len("include/mobiletune/"):]
        for module, (_, headers, _) in modules.items():
            if name in headers:
                return module
        return None
    best, best_length = None, -1
    for module, (folders, _, _) in modules.items():
        for folder in folders:
            if (relative == folder or relative.startswith(folder + "/")) and len(folder) > best_length:
                best, best_length = module, len(folder)
    return best


def resolve(includer, written):
    """The repository path an #include "written" in `includer` names, or None (generated or
    system headers: the include paths of src/CMakeLists.txt are include/, src/ and the file's
    own folder)."""
    candidates = [os.path.join(os.path.dirname(includer), written), os.path.join("src", written),
                  os.path.join("include", written)]
    for candidate in candidates:
        candidate = os.path.normpath(candidate)
        if os.path.isfile(os.path.join(SOURCE, candidate)):
            return candidate
    return None


def main():
    modules = read_table()
    problems = []
    used_exceptions = set()
    files = []
    for top in ("src", "include/mobiletune", "data-prep"):
        for folder, _, names in os.walk(os.path.join(SOURCE, top)):
            for name in sorted(names):
                if name.endswith(SOURCE_EXTENSIONS):
                    files.append(os.path.relpath(os.path.join(folder, name), SOURCE))
    # every folder of src/ with sources, and every public header, belongs somewhere
    for relative in sorted(files):
        if module_of(relative, modules) is None:
            what = ("public header" if relative.startswith("include/")
                    else "folder " + os.path.dirname(relative))
            problems.append(f"{relative}: its {what} belongs to no module of {DOC}: add it to "
                            f"the module table")
    exceptions = {(f, w): why for f, w, why in EXCEPTIONS}
    checked = 0
    for relative in sorted(files):
        module = module_of(relative, modules)
        if module is None:
            continue
        with open(os.path.join(SOURCE, relative), encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                match = INCLUDE.match(line)
                if not match:
                    continue
                written = match.group(1)
                target = resolve(relative, written)
                if target is None:
                    if written.startswith(("mobiletune/", "core/", "image/", "data/", "io/",
                                           "ops/", "model/", "comm/", "train/", "cli/")):
                        problems.append(f"{relative}:{number}: includes \"{written}\", which "
                                        f"does not exist")
                    continue  # generated (onnx/onnx.pb-c.h) or a system header in quotes
                checked += 1
                other = module_of(target, modules)
                if other is None or other == module:
                    continue
                if other in modules[module][2]:
                    continue
                if (relative, written) in exceptions:
                    used_exceptions.add((relative, written))
                    continue
                allowed = ", ".join(sorted(modules[module][2])) or "nothing but itself"
                problems.append(
                    f"{relative}:{number}: includes \"{written}\" ({other}), but {module} may "
                    f"include only {allowed} ({DOC}). Turn the dependency around, move the code "
                    f"to the module it belongs to, or list a justified exception in "
                    f"tests/docs/include_directions.py")
    for f, w, _ in EXCEPTIONS:
        if (f, w) not in used_exceptions:
            problems.append(f"tests/docs/include_directions.py: the exception for {f} including "
                            f"\"{w}\" is no longer needed: remove it")
    for problem in problems:
        print(problem)
    print(f"{len(files)} files, {checked} includes of the project's own headers checked against "
          f"{len(modules)} modules; {len(used_exceptions)} justified exceptions; "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
