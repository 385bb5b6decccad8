from __future__ import annotations

from drt.experiments import DemoConfig, _verdict, format_table


def test_table_reports_mean_and_std_over_seeds_and_the_average_column() -> None:
    cells = {
        "MCD (static)": {"a": [50.0, 52.0, 54.0], "b": [70.0, 70.0, 70.0]},
        "MCD + DRT (DRT)": {"a": [60.0, 60.0, 60.0], "b": [80.0, 82.0, 84.0]},
    }
    table = format_table(cells, ("a", "b"))
    lines = table.splitlines()
    assert lines[0] == "| method | → a | → b | Avg |"
    assert lines[2] == "| MCD (static) | 52.00 ± 2.00 | 70.00 ± 0.00 | 61.00 ± 1.00 |"
    assert lines[3] == "| MCD + DRT (DRT) | 60.00 ± 0.00 | 82.00 ± 2.00 | 71.00 ± 1.00 |"


def test_verdict_is_undecided_within_one_std_and_quick_config_is_small() -> None:
    assert _verdict(2.0, 1.0) is True and _verdict(-2.0, 1.0) is False and _verdict(0.5, 1.0) is None
    quick, full = DemoConfig.quick(), DemoConfig()
    assert len(full.seeds) == 3 and len(full.targets) >= 2
    assert quick.steps < full.steps and quick.limit is not None and quick.targets == full.targets
