"""What the tests that start a one-node Slurm (../shared/tools/slurm_local.sh) share."""
import socket


def free_port_pair():
    """A port P with P and P + 1 free (slurmctld, slurmd), so that a Slurm started at the same time
    elsewhere on the machine cannot make the test fail; None when 50 tries found none."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port > 65000:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    return None
