"""What the Python benchmarks print alike: the host they ran on (CPU model, CPU count, load
average, read from /proc) and their results as a Markdown table, so
bench/model/compare_frameworks.py and bench/protocol/keras_side_by_side.py report the same way.
Standard library only: the benchmarks import it under any of the frameworks' Pythons."""
import os


def load_average():
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them ("0.52 0.31 0.20")."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def host_description():
    """"<CPU model>, <n> CPUs, load average <a b c>": what a benchmark's first line says."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load_average()}"


def print_table(header, rows, left=1):
    """A Markdown table: `header` and each row are lists of cells, printed with str() (format
    the numbers first); the first `left` columns are left-aligned, the others right-aligned
    (numbers), each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|")
    for row in rows:
        print(line(row))
