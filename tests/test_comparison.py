"""Pretrained-versus-random statistics: paired t-intervals and the verdict they support."""
import pytest

from modprobe.comparison import ComparisonReport, compare_scalars, paired_difference


def test_paired_difference_matches_a_hand_computed_t_interval():
    row = paired_difference([0.5, 0.7, 0.6], [0.1, 0.2, 0.3])
    # diffs 0.4, 0.5, 0.3: mean 0.4, sd 0.1, t(0.975, 2) = 4.3027
    assert row["difference"] == pytest.approx(0.4)
    assert row["ci_low"] == pytest.approx(0.4 - 4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert row["ci_high"] == pytest.approx(0.4 + 4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert row["pretrained_mean"] == pytest.approx(0.6) and row["random_sd"] == pytest.approx(0.1)


def test_one_seed_gives_no_interval_and_no_claim():
    report = compare_scalars([{"isolation": 0.5}], [{"isolation": 0.0}], seeds=[0])
    assert report.rows[0]["ci_low"] is None
    assert "not distinguishable" in report.verdict


@pytest.mark.parametrize("random_values, word", [
    ([0.0, 0.1, 0.05], "more isolated"),
    ([0.9, 1.0, 0.95], "less isolated"),
    ([0.2, 0.9, 0.4], "not distinguishably"),
])
def test_verdict_follows_the_interval(random_values, word):
    report = compare_scalars([{"isolation": v} for v in (0.5, 0.6, 0.55)],
                             [{"isolation": v} for v in random_values], seeds=[0, 1, 2])
    assert word in report.verdict


def test_report_round_trips_through_json():
    report = compare_scalars([{"isolation": 0.5, "decodability": 0.3}] * 2,
                             [{"isolation": 0.1, "decodability": 0.2}] * 2, seeds=[0, 1])
    again = ComparisonReport.from_json(report.to_json())
    assert again == report and len(again.rows) == 2


def test_mismatched_groups_raise():
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])


def test_a_seed_where_an_arm_did_not_learn_is_left_out_and_counted():
    report = compare_scalars([{"task_metric": 0.9, "isolation": v} for v in (0.5, 0.6, 0.55)],
                             [{"task_metric": t, "isolation": v}
                              for t, v in ((0.3, 0.9), (0.9, 0.1), (0.9, 0.2))],
                             seeds=[0, 1, 2], learned=[(True, False), (True, True), (True, True)])
    assert report.seeds == [1, 2]
    iso = {r["metric"]: r for r in report.rows}["isolation"]
    assert iso["n_seeds"] == 2 and iso["random_mean"] == pytest.approx(0.15)
    assert iso["random_task_metric"] == pytest.approx(0.9)
    assert "random-init learned it in 2 of 3 seeds" in report.verdict
    assert [a["status"] for a in report.arms if a["arm"] == "random"] == [
        "did not learn the task", "learned the task", "learned the task"]
    alone = {(r["arm"], r["metric"]): r for r in report.each_arm}
    assert alone[("random", "isolation")]["seeds"] == [1, 2]  # the seed it did not learn is out
    assert alone[("pretrained", "isolation")]["n_seeds"] == 3
    assert alone[("pretrained", "isolation")]["mean"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="one \\(pretrained, random\\) pair per seed"):
        compare_scalars([{"isolation": 0.5}], [{"isolation": 0.1}], seeds=[0], learned=[])
