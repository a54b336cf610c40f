"""bench/RESULTS.md bookkeeping: a benchmark rewrites its own section and leaves the others alone."""

from bench.common import sections, verdict, write_section


def test_write_section_replaces_its_own_and_keeps_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("A", "first a\n", path)
    write_section("B", "only b\n", path)
    write_section("A", "second a\n", path)
    text = path.read_text()
    found = sections(text)
    assert list(found) == ["A", "B"]
    assert "second a" in found["A"] and "first a" not in text and "only b" in found["B"]
    assert text.startswith("# Benchmark results")


def test_verdict_says_met_or_by_how_much_it_misses():
    assert verdict(6.0, 5.0) == "met"
    assert verdict(2.5, 5.0) == "missed (2.00x short)"
    assert verdict(30.0, 15.0, higher_is_better=False) == "missed (2.00x short)"
    assert verdict(10.0, 15.0, higher_is_better=False) == "met"
