"""A Spark job to try spark-poller with: works for SECONDS (default 5), then exits with EXIT_CODE
(default 0; anything else makes Spark report the driver FAILED).

    sample_job.py [SECONDS [EXIT_CODE]]

Submitted as a ``.py`` resource, Spark runs it in cluster mode through its Python runner, so it
needs neither a jar nor a Spark session: only a Python 3 interpreter on the worker (the demo's
worker uses the project's virtualenv). ``make demo`` submits it, and so do the README's examples.
"""

import sys
import time


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 5.0
    exit_code = int(argv[1]) if len(argv) > 1 else 0
    sys.stdout.write(f"sample job: working for {seconds:g} s, then exiting {exit_code}\n")
    sys.stdout.flush()
    time.sleep(seconds)
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
