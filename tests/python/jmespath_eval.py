"""Evaluates JMESPath expressions with Python's jmespath, the reference
implementation, so that tests/auth.rs can check the runner's JMESPath
library against it.

usage: jmespath_eval.py < CASES
CASES: one JSON object a line, {"expression": ..., "input": ...}; prints one
JSON line per case: {"result": ...} or {"error": "..."}.
"""

import json
import sys

import jmespath


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        try:
            result = {"result": jmespath.search(case["expression"], case["input"])}
        except Exception as error:  # every failure is an answer to compare
            result = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
