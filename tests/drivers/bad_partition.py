"""A Python driver that fails the way user code does: an exception raised deep in a call."""

import sys


def process_partition(index: int) -> None:
    if index == 7:
        raise ValueError(f"bad partition {index}")


def main() -> None:
    print("processing partitions", flush=True)
    for index in range(int(sys.argv[1]) if len(sys.argv) > 1 else 10):
        process_partition(index)


if __name__ == "__main__":
    main()
