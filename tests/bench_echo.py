"""A stand-in benchmark for tests/test_bench_compare.py: prints whether it was given ``--marked``."""

import json
import sys

if __name__ == "__main__":
    print(json.dumps({"marked": int("--marked" in sys.argv[1:])}))
