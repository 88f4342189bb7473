"""Schema versions of probe records (memplan.probe/1) and calibration files (memplan.calibration/1);
torn last lines, bad middle lines and appends of the JSONL record files."""

import json
import warnings

import pytest
from typer.testing import CliRunner

from bad_input_cases import record
from memplan.cli.main import app
from memplan.spec.loading import InputError, load_calibration
from memplan.probe import records

runner = CliRunner()


def write_lines(path, *lines, end="\n"):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() for line in lines[:-1])
                     + (lines[-1] if isinstance(lines[-1], bytes) else lines[-1].encode()) + end.encode())
    return path


def line(**changes) -> str:
    return json.dumps(record(**changes)) + "\n"


# --------------------------------------------------------------------------- record schema


@pytest.mark.parametrize("schema, shown", [("memplan.probe/0", "'memplan.probe/0'"), ("other.tool/1", "'other.tool/1'"),
                                           (1, "1"), (None, "None")])
def test_old_foreign_or_null_record_schema_is_an_input_error(tmp_path, schema, shown):
    path = write_lines(tmp_path / "r.jsonl", line(), line(schema=schema), end="")
    with pytest.raises(InputError, match=rf"r.jsonl:2: schema {shown} is not memplan.probe/1"):
        records.read_records(path)


def test_missing_record_schema_is_an_input_error(tmp_path):
    data = record()
    del data["schema"]
    path = write_lines(tmp_path / "r.jsonl", json.dumps(data))
    with pytest.raises(InputError, match=r"r.jsonl:1: schema None is not memplan.probe/1 \(the record has no schema key"):
        records.read_records(path)


@pytest.mark.parametrize("schema", ["memplan.probe/2", None])
def test_validate_exits_2_on_a_foreign_record(tmp_path, schema):
    data = record(schema=schema) if schema else {k: v for k, v in record().items() if k != "schema"}
    path = write_lines(tmp_path / "r.jsonl", json.dumps(data))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ") and "memplan.probe/1" in result.output


# --------------------------------------------------------------------------- calibration schema


@pytest.mark.parametrize("text, needle", [
    ("schema: memplan.calibration/0\nreserved_ratio: 0.1\n", "schema='memplan.calibration/0': expected 'memplan.calibration/1'"),
    ("schema: memplan.gpus/1\ngpus: {}\n", "schema='memplan.gpus/1': expected 'memplan.calibration/1'"),
    ("reserved_ratio: 0.1\n", "schema missing: expected schema: memplan.calibration/1"),
    ("schema: null\n", "schema=None: expected 'memplan.calibration/1'"),
])
def test_old_foreign_or_missing_calibration_schema(tmp_path, text, needle):
    path = tmp_path / "calibration.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=None) as caught:
        load_calibration(path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    good = write_lines(tmp_path / "r.jsonl", line(), end="")
    result = runner.invoke(app, ["validate", str(good), "--calibration", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and needle in result.output


def test_current_calibration_schema_loads(tmp_path):
    path = tmp_path / "calibration.yaml"
    path.write_text("schema: memplan.calibration/1\nreserved_ratio: 0.1\n")
    assert load_calibration(path).reserved_ratio == 0.1


def test_calibrate_writes_a_file_validate_reads_back(tmp_path):
    good = write_lines(tmp_path / "r.jsonl", line(), end="")
    out = tmp_path / "cal.yaml"
    result = runner.invoke(app, ["calibrate", str(good), "--out", str(out), "--all-sides"])
    assert result.exit_code == 0, result.output
    assert load_calibration(out).fitted_on == [str(good)]
    result = runner.invoke(app, ["validate", str(good), "--calibration", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- torn and bad lines


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    full = line()
    path = write_lines(tmp_path / "r.jsonl", full, full[: len(full) // 2], end="")
    with pytest.warns(UserWarning, match=r"r.jsonl:2: skipping a torn last line"):
        assert records.read_records(path) == [record()]


def test_torn_last_line_cut_inside_a_utf8_character(tmp_path):
    full = json.dumps(record(command="memplan probe --note 'héllo ünïcode'"), ensure_ascii=False).encode()
    cut = full.index("é".encode()) + 1  # half of a two-byte character
    path = write_lines(tmp_path / "r.jsonl", line(), full[:cut], end="")
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(records.read_records(path)) == 1


def test_cli_prints_one_warning_line_for_a_torn_line_and_goes_on(tmp_path):
    full = line()
    path = write_lines(tmp_path / "r.jsonl", full, full[:40], end="")
    result = runner.invoke(app, ["validate", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: {path}:2: skipping a torn last line")
    assert len(json.loads(result.stdout)["records"]) == 1


@pytest.mark.parametrize("bad", ["{oops", "[1, 2", "not json at all", "\x00\x01"])
def test_bad_middle_line_names_file_and_line(tmp_path, bad):
    path = write_lines(tmp_path / "r.jsonl", line(), bad + "\n", line(), end="")
    with pytest.raises(InputError, match=r"r.jsonl:2: not a JSON record"):
        records.read_records(path)


def test_bad_terminated_last_line_is_an_error_not_a_tear(tmp_path):
    """A writer appends line + newline in one write: a bad line that has its newline is corruption."""
    path = write_lines(tmp_path / "r.jsonl", line(), "{oops")
    with pytest.raises(InputError, match=r"r.jsonl:2: not a JSON record"):
        records.read_records(path)


def test_non_utf8_middle_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", line(), b"\xff\xfe{}\n", line(), end="")
    with pytest.raises(InputError, match=r"r.jsonl:2: not UTF-8 text \(byte 0: 0xff\)"):
        records.read_records(path)


def test_blank_lines_and_crlf_are_tolerated(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", "\n", line().replace("\n", "\r\n"), "\n", line(), end="\n\n")
    assert len(records.read_records(path)) == 2


# --------------------------------------------------------------------------- appends


def test_appending_never_changes_earlier_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    written = []
    for i in range(6):
        before = path.read_bytes() if path.exists() else b""
        data = record(run_id=f"run-{i}", notes=["x" * (i * 1000)])
        records.append_record(path, data)
        assert path.read_bytes().startswith(before)  # a pure append
        written.append(json.loads(json.dumps(data)))
        assert records.read_records(path) == written


def test_append_after_a_torn_line_drops_the_fragment(tmp_path):
    path = tmp_path / "r.jsonl"
    records.append_record(path, record(run_id="a"))
    good = path.read_bytes()
    with open(path, "a") as handle:
        handle.write(line(run_id="killed")[:60])  # a writer killed mid-line
    with pytest.warns(UserWarning, match="dropping a torn last line"):
        records.append_record(path, record(run_id="b"))
    assert path.read_bytes().startswith(good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing torn is left
        assert [r["run_id"] for r in records.read_records(path)] == ["a", "b"]


def test_append_after_a_complete_unterminated_line_keeps_it(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(run_id="a")))  # hand-written, no final newline
    records.append_record(path, record(run_id="b"))
    assert [r["run_id"] for r in records.read_records(path)] == ["a", "b"]


def test_append_refuses_a_foreign_schema(tmp_path):
    with pytest.raises(ValueError, match="is not memplan.probe/1"):
        records.append_record(tmp_path / "r.jsonl", record(schema="memplan.probe/0"))
    assert not (tmp_path / "r.jsonl").exists()
