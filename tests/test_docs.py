"""The docs a user reads stay true: every stop in the schema is in docs/STOPS.md."""

from pathlib import Path

from traces.schema import STOPS

ROOT = Path(__file__).resolve().parent.parent


def test_stops_doc_lists_every_stop_in_catalog_order():
    doc = (ROOT / "docs" / "STOPS.md").read_text()
    positions = [doc.find(f"| `{s.name}` | {s.code} | {s.phase} |") for s in STOPS]
    assert all(p >= 0 for p in positions), [s.name for s, p in zip(STOPS, positions) if p < 0]
    assert positions == sorted(positions)


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/run" in readme and "scripts/test" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
