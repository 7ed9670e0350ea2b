"""Print the error every bad input of ``tests/bad_inputs.py`` gets, as a Markdown table.

Runs each case for real (DataFrame cases on a loopback ``local[2]`` session) and prints one
row per case: the kind of input, the method, what is wrong, and the first line of the error
(for errors raised on an executor, the line of skdbn's own message). The table in
``docs/reliability.md`` is this script's output::

    python benchmarks/bad_input_table.py > /tmp/table.md
"""

import os
import re
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from bad_inputs import ARRAY_CASES, DATAFRAME_CASES, Context, error_type

from skdbn import loopback_session


def first_line(case, error):
    """The line of the error worth reading: skdbn's own text, not a JVM stack."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    mine = [line for line in lines if re.search(case.match, line)]
    line = (mine or lines or [""])[0]
    line = re.sub(r"^\w*Error: ", "", line)
    return line if len(line) <= 160 else line[:157] + "..."


def run(case, context):
    try:
        case.run(context)
    except Exception as error:  # the point: record whatever it raises
        expected = isinstance(error, error_type(case)) and re.search(case.match, str(error))
        return type(error).__name__, first_line(case, error), bool(expected)
    return "(nothing raised)", "", False


def main():
    warnings.simplefilter("ignore")
    spark = loopback_session("local[2]", app_name="skdbn-bad-inputs")
    try:
        rows = []
        for cases, context in ((ARRAY_CASES, Context()), (DATAFRAME_CASES, Context(spark))):
            for case in cases:
                rows.append((case, *run(case, context)))
    finally:
        spark.stop()
    print("| # | input | method | what is wrong | error | message |")
    print("|---|---|---|---|---|---|")
    for number, (case, kind, message, expected) in enumerate(rows, 1):
        flag = "" if expected else " **(unexpected)**"
        message = message.replace("|", "\\|")
        print(f"| {number} | {case.data} | `{case.method}` | {case.name} | `{kind}`{flag} | "
              f"{message} |")
    unexpected = sum(not expected for *_, expected in rows)
    print(f"\n{len(rows)} cases, {unexpected} unexpected")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
