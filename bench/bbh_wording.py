"""How closely rvec's BBH questions, built from BIG-bench's task files, match BIG-Bench Hard's own files.

For each of the 24 BBH tasks the `bigbench` 1.0.0 archive holds, it counts BBH's examples whose text
(`input`) and target rvec produces verbatim, and those it produces up to the order of the options (BBH
shuffled the options of date_understanding and temporal_sequences, rvec shuffles them with its own seed).
BBH's files are not on PyPI: pass a checkout of https://github.com/suzgunmirac/BIG-Bench-Hard.

    .venv/bin/python bench/bbh_wording.py --bbh ~/src/BIG-Bench-Hard/bbh --bbh-commit COMMIT

Figures go to bench/results/bbh-wording.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rvec_hub.bbh import AVAILABLE, load_bbh


def _unordered(question: str, answers: set[str]) -> tuple[tuple[str, frozenset[str]], set[str]]:
    """(stem, set of options) and the texts of the answer options: a question with its options in any order."""
    stem, _, options = question.partition("\nOptions:\n")
    by_letter = {line[:3]: line[4:] for line in options.split("\n") if line}
    return (stem, frozenset(by_letter.values())), {by_letter.get(a, a) for a in answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bbh", type=Path, required=True, help="the bbh/ folder of a BIG-Bench-Hard checkout")
    parser.add_argument("--bbh-commit", default=None, help="the BIG-Bench-Hard commit checked out, recorded with the figures")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bbh-wording.json")
    args = parser.parse_args()
    rows = []
    print("| task | BBH examples | verbatim | options reordered | BIG-bench examples |\n| --- | --- | --- | --- | --- |")
    for name in AVAILABLE:
        ours = load_bbh(name)
        exact: dict[str, set[str]] = {}
        loose: dict[tuple, set[str]] = {}
        for t in ours.tasks:  # a few BIG-bench questions appear twice; either target counts
            exact.setdefault(t.question, set()).update((t.answer, *t.accepted))
            key, texts = _unordered(t.question, {t.answer, *t.accepted})
            loose.setdefault(key, set()).update(texts)
        theirs = json.loads((args.bbh / f"{name}.json").read_text())["examples"]
        verbatim = sum(e["target"] in exact.get(e["input"], ()) for e in theirs)
        reordered = sum(v <= loose.get(k, set()) for k, v in (_unordered(e["input"], {e["target"]}) for e in theirs))
        rows.append({"task": name, "bbh": len(theirs), "verbatim": verbatim, "up_to_option_order": reordered, "bigbench": len(ours.tasks)})
        print(f"| {name} | {len(theirs)} | {verbatim} | {reordered} | {len(ours.tasks)} |")
    total = {k: sum(r[k] for r in rows) for k in ("bbh", "verbatim", "up_to_option_order")}
    print(f"| all | {total['bbh']} | {total['verbatim']} | {total['up_to_option_order']} | |")
    args.out.write_text(json.dumps({"bbh_commit": args.bbh_commit, "tasks": rows, "total": total}, indent=1) + "\n")


if __name__ == "__main__":
    main()
