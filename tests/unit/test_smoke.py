import tether


def test_run_true() -> None:
    done = tether.run(["true"])
    assert done.returncode == 0
    assert done.report.complete
