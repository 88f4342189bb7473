"""Bad input through the CLI, every command that reads user input: one `error:` line naming the field,
the value and what is allowed; exit code 2; no traceback. The cases live in tests/bad_input_cases.py
(shared with scripts/bad_input_table.py, which writes docs/bad-input.md from their real output)."""

import pytest

from bad_input_cases import CASES, app_has_one_line_usage_errors, problems, run_case

ONE_LINE_USAGE = app_has_one_line_usage_errors()


def _param(case):
    marks = []
    if case.usage and not ONE_LINE_USAGE:
        marks.append(pytest.mark.xfail(strict=True, reason="usage errors print typer's multi-line box until "
                                       "memplan/cli/main.py builds the app with typer.Typer(cls=OneLineErrors)"))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_is_one_error_line_exit_2(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert not problems(case, outcome), (problems(case, outcome), outcome.output)


def test_every_input_reading_command_has_cases():
    commands = {case.command for case in CASES}
    assert {"estimate", "profiles", "calibrate", "validate", "profile import", "profile compose", "probe", "compare",
            "search", "scan"} <= commands


def test_case_ids_are_unique():
    assert len({case.id for case in CASES}) == len(CASES)
