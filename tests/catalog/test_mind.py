"""The MIND importer on small files written here in MIND's own format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from catalog import DataError, load_catalog
from catalog.mind import load_mind
from duorank.cli import cli

NEWS = (
    "N1\tsports\tfootball_nfl\tThe Bills win again\tBuffalo beat Miami 31-10.\thttp://a\t[]\t[]\n"
    "N2\tnews\tnewspolitics\tVote count begins\tCounting starts in three states.\thttp://b\t[]\t[]\n"
    "N3\tfoodanddrink\trecipes\tTen soups for winter\t\thttp://c\t[]\t[]\n"
)
BEHAVIORS = (
    "1\tU1\t11/11/2019 9:05:58 AM\tN2 N3\tN1-1 N2-0\n"
    "2\tU2\t11/12/2019 1:00:00 PM\t\tN3-0 N1-1\n"
    "3\tU1\t11/13/2019 7:30:00 PM\tN2 N3\tN3-1\n"
)


def _folder(root: Path, news: str = NEWS, behaviors: str = BEHAVIORS) -> Path:
    root.mkdir()
    (root / "news.tsv").write_text(news, encoding="utf-8")
    (root / "behaviors.tsv").write_text(behaviors, encoding="utf-8")
    return root


def test_news_become_items_and_impressions_labelled_events(tmp_path: Path) -> None:
    catalog = load_mind(_folder(tmp_path / "mind"), negatives=True)
    bills = catalog.items["N1"]
    assert bills.title == "The Bills win again" and bills.genres == ("sports", "football_nfl")
    assert bills.description.startswith("Buffalo")
    inter = catalog.interactions
    rows = sorted(
        zip(
            inter.user_ids.tolist(),
            inter.item_ids.tolist(),
            inter.timestamps.tolist(),
            inter.labels.tolist(),
            inter.events.tolist(),
            strict=True,
        ),
        key=lambda r: (r[0], r[2]),
    )
    u1 = [r for r in rows if r[0] == "U1"]
    first = 1573463158  # 11/11/2019 9:05:58 AM UTC
    # The history once, just before the first impression and in its order; then the log.
    assert [(r[1], r[2], r[3], r[4]) for r in u1] == [
        ("N2", first - 2, 1, "history"),
        ("N3", first - 1, 1, "history"),
        ("N1", first, 1, "click"),
        ("N2", first, 0, "impression"),
        ("N3", first + 2 * 86400 + 10 * 3600 + 24 * 60 + 2, 1, "click"),
    ]
    assert np.isnan(inter.ratings).all()
    without = load_mind(tmp_path / "mind")  # clicks only: the default
    assert (without.interactions.labels == 1).all()
    assert len(without.interactions) == len(inter) - 2


def test_a_bad_row_names_its_file_line_and_value(tmp_path: Path) -> None:
    bad = BEHAVIORS.replace("N1-1 N2-0", "N1-1 N2-x", 1)
    folder = _folder(tmp_path / "mind", behaviors=bad)
    with pytest.raises(DataError, match=r"behaviors\.tsv:1.*impressions.*N2-x"):
        load_mind(folder)
    skipped = load_mind(folder, skip_bad=True)
    assert skipped.stats["skipped_rows"] == 1
    when = BEHAVIORS.replace("11/12/2019 1:00:00 PM", "2019-11-12", 1)
    with pytest.raises(DataError, match=r"behaviors\.tsv:2.*time.*2019-11-12"):
        load_mind(_folder(tmp_path / "m2", behaviors=when))
    short = NEWS.replace("\thttp://c\t[]\t[]", "", 1)
    with pytest.raises(DataError, match=r"news\.tsv:3.*8 tab-separated"):
        load_mind(_folder(tmp_path / "m3", news=short))


def test_the_cli_imports_mind_into_a_dataset_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "mind")
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        cli,
        [
            "--home",
            str(tmp_path / "home"),
            "data",
            "import",
            "mind",
            str(folder),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    catalog = load_catalog(out)
    assert len(catalog.items) == 3 and set(catalog.users) == {"U1", "U2"}
    assert catalog.source["loader"] == "mind"
