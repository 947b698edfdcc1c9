"""Every bad input of the battery (bench/bad_inputs.py) ends in one line that names the mistake: no
traceback, no silent run, no error about something else. `python bench/bad_inputs.py` prints the tally."""

import pytest

from bench.bad_inputs import CASES, EXPECT, ONE_LINE, check


def test_every_case_says_what_it_expects():
    assert set(EXPECT) == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name, tmp_path):
    outcome, said = check(CASES[name], tmp_path, EXPECT[name])
    assert outcome == ONE_LINE, f"{name}: {outcome}: {said}"
    assert not (tmp_path / "rep").exists() or name.endswith("other settings")  # no folder left by a failed report
