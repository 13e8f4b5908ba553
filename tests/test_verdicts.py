"""The report's verdicts through the real CLI (``hpt-hpc report --from-files``) on
synthetic result files with planted accuracies: equal seed sets, equivalent vs unresolved,
an unconverged baseline, and the random-init reference of the same probe mode."""
from __future__ import annotations

import re

import numpy as np
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.eval.record import write_record_file
from tiny import write_tiny_experiment
from verdicts import TARGETS, record

SEEDS = (0, 1, 2)


def _rows():
    rows = []
    for s in SEEDS:
        hpt300 = record("HPT", 500, s, 0.90, images="300")
        twin = hpt300.predictions.predictions.copy()  # HPT-BN: 2 images differ, or none
        right = np.flatnonzero(twin[0] == TARGETS)[:2]
        wrong = np.flatnonzero(twin[0] != TARGETS)[:2]
        if s == 0:
            twin[0, wrong] = TARGETS[wrong]
        elif s == 1:
            twin[0, right] = (TARGETS[right] + 1) % 10
        rows += [record("random-init", 0, s, 0.50), record("Base", 0, s, 0.85),
                 record("HPT", 50, s, 0.86), record("HPT", 500, s, 0.95),
                 record("Target", 500, s, 0.70), record("Target", 2000, s, 0.90),
                 record("Target", 500, s, 0.80, images="300"), hpt300,
                 record("HPT-BN", 500, s, 0, preds=twin, images="300"),
                 record("random-init", 0, s, 0.65, mode="augmented"),
                 record("Target", 500, s, 0.60, mode="augmented"),
                 record("HPT", 500, s, 0.95, mode="augmented")]
    # the augmentation study on seed 0 only
    rows += [record("HPT", 2000, 0, 0.96), record("HPT", 2000, 0, 0.93, augment="crop"),
             record("Target", 2000, 0, 0.70, augment="crop")]
    return rows


def _line(markdown: str, comparison: str) -> str:
    return next(line for line in markdown.splitlines() if f"| {comparison} |" in line)


def _report(tmp_path, experiment) -> str:
    """The planted rows as result files, reported through the CLI: the Markdown."""
    for i, rec in enumerate(_rows()):
        uid = f"u{i}-{rec.method}-{rec.steps}-{rec.seed}"
        write_record_file(rec, tmp_path / "out" / "units" / uid / "results" / f"{uid}.json")
    result = CliRunner().invoke(cli, ["report", str(experiment), "--from-files",
                                      "--all-units", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    return (tmp_path / "report" / "tiny-sweep.md").read_text()


def test_report_verdicts_name_seeds_equivalence_and_preconditions(tmp_path, mnist_tree):
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}})
    md = _report(tmp_path, experiment)
    assert "tie" not in md.lower().replace("tied", "")
    # a difference inside ±1 point is equivalent; one containing 0 but wider, unresolved
    equivalent = _line(md, "HPT-BN − HPT (300 images)")
    assert "| equivalent |" in equivalent and "1 base × 3 target seeds" in equivalent
    assert "| unresolved |" in _line(md, "HPT@50 − Base")
    assert "| supported |" in _line(md, "HPT − Target (300 images)")
    # Target still climbs from 500 to 2000 steps (70 -> 90): claim 2 cannot be judged
    claim2 = _line(md, "HPT@50 − Target@2000")
    assert "| inconclusive |" in claim2
    assert re.search(r"Target not converged at 2000 steps \(\+\d+\.\d \[\+\d", claim2)
    # the augmentation study shares one seed only: inconclusive, naming the cells
    claim4 = _line(md, "Target drop − HPT drop (crop, 2000 steps)")
    assert "1 seed(s) shared by all cells, 3 needed: " in claim4
    assert "Target@2000 (aug. crop) has seed 0" in claim4 and "HPT@2000 has seed 0" in claim4
    # augmented Target (60) is above the cached random init (50) but below the augmented
    # one (65): judged in its own mode, HPT vs Target is inconclusive there
    assert "HPT@500 − Target@500 (augmented inconclusive, cached supported)" in md
    assert "equivalent (inside ± the claim's margin)" in md and "| ±1.0 |" in md


def test_a_baseline_gaining_by_its_next_budget_is_not_converged():
    """Target@2000 judged against a sweep that also has Target@4000: a plateau (+1 point,
    within noise) passes, a clear gain makes the comparison inconclusive."""
    from hpt_hpc.experiments.claims import judge_claims
    from hpt_hpc.experiments.results import group_cells

    def claim4(target4000: float):
        rows = [r for r in _rows() if not (r.method == "HPT" and r.steps == 2000)]
        for s in SEEDS:  # the augmentation study on 3 seeds now
            rows += [record("HPT", 2000, s, 0.96), record("HPT", 2000, s, 0.93, augment="crop"),
                     record("Target", 2000, s, 0.70, augment="crop"),
                     record("Target", 4000, s, target4000)]
        claims = judge_claims(group_cells(rows), "mnist", [50, 500, 2000, 4000])
        return next(c for c in claims if c.number == "4").judgements[0]

    plateau = claim4(0.905)
    assert plateau.verdict == "supported" and plateau.seeds == "1 base × 3 target seeds"
    climbing = claim4(0.97)
    assert climbing.verdict == "inconclusive"
    assert "Target not converged at 2000 steps" in climbing.reasons[0]
    assert "from 2000 to 4000 steps" in climbing.reasons[0]


def test_an_experiment_file_caveat_follows_its_claims_verdict(tmp_path, mnist_tree):
    """``caveats: {5: ...}`` prints after claim 5's verdict and nowhere else; a caveat for
    a claim that does not exist is refused in one line before anything runs."""
    studies = {"s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}}
    text = "the queue and the passes per image change with the amount"
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, studies,
                                       caveats={5: text})
    md = _report(tmp_path, experiment)
    claim5 = next(line for line in md.splitlines() if line.startswith("| 5 | HPT beats"))
    assert claim5.endswith(f"; caveat: {text} |")
    assert md.count("caveat:") == 1
    write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, studies, caveats={"6": text})
    for args in (["sweep", str(experiment), "--dry-run"], ["report", str(experiment)]):
        bad = CliRunner().invoke(cli, args)
        assert bad.exit_code == 2 and bad.output.count("\n") == 1
        assert "caveats: '6' is not a claim (claims: 1, 2, 3, 4, 5, C)" in bad.output


def test_the_claims_judged_are_the_claim_numbers_a_caveat_may_name():
    import inspect

    from hpt_hpc.experiments import claims
    from hpt_hpc.plan.methods import CLAIM_NUMBERS
    judged = re.findall(r'Claim\("(\w+)"', inspect.getsource(claims.judge_claims))
    assert tuple(judged) == CLAIM_NUMBERS


def test_the_report_sections_of_each_protocol_are_headed_by_the_table(tmp_path):
    """The linear and fine-tuning sections take their headings from the protocol table
    (a protocol's heading changed there is what the report prints)."""
    import dataclasses

    from hpt_hpc.config.protocols import FINETUNE, LINEAR, PROTOCOLS
    from hpt_hpc.experiments.report import build_report
    rows = [record("HPT", 50, s, 0.9) for s in SEEDS]
    rows += [dataclasses.replace(record("HPT", 50, s, 0.93), protocol=FINETUNE,
                                 mode="finetune (100 labels)") for s in SEEDS]
    md = build_report(rows, tmp_path, "r").markdown
    assert f"### mnist: {PROTOCOLS[LINEAR].heading}\n" in md
    assert f"### mnist: {PROTOCOLS[FINETUNE].heading} (100 labels), test accuracy" in md
    assert PROTOCOLS[FINETUNE].heading == "semi-supervised fine-tuning"


def test_a_pipe_in_a_table_cell_never_adds_a_column():
    from hpt_hpc.experiments.tables import markdown_table
    lines = markdown_table(["#", "verdict"], [["3", "supported; caveat: a | b"]])
    assert lines[2] == "| 3 | supported; caveat: a \\| b |"
    assert len(lines[2].replace("\\|", "").split("|")) == len(lines[0].split("|"))
