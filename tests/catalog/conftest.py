"""Tiny MovieLens-shaped fixture folders, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ml_csv(tmp_path: Path) -> Path:
    """latest-small / 25M layout."""
    root = tmp_path / "ml-csv"
    root.mkdir()
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Nothing (2000),(no genres listed)\n",
        encoding="utf-8",
    )
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.5,200\n2,1,5.0,150\n2,3,1.0,160\n",
        encoding="utf-8",
    )
    (root / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,fun,2\n3,1,Pixar,3\n1,2,politics,4\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture
def ml_100k(tmp_path: Path) -> Path:
    """100K layout: tab-separated u.data, latin-1 pipe-separated u.item and u.user."""
    root = tmp_path / "ml-100k"
    root.mkdir()
    flags_toy = ["0"] * 19
    flags_toy[3] = flags_toy[4] = flags_toy[5] = "1"  # Animation, Children's, Comedy
    flags_other = ["0"] * 19
    flags_other[8] = "1"  # Drama
    (root / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_toy) + "\n"
            "2|Señor Café (1996)|01-Jan-1996||http://y|" + "|".join(flags_other) + "\n"
        ).encode("latin-1")
    )
    (root / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|94043\n", encoding="latin-1"
    )
    (root / "u.data").write_text(
        "1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t878542960\n", encoding="latin-1"
    )
    return root


@pytest.fixture
def ml_1m(tmp_path: Path) -> Path:
    """1M layout: '::'-separated latin-1 .dat files."""
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "movies.dat").write_bytes(
        (
            "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Amélie (2001)::Comedy|Romance\n"
        ).encode("latin-1")
    )
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n", encoding="latin-1")
    (root / "ratings.dat").write_text(
        "1::1::5::978300760\n2::2::4::978302109\n2::1::2::978301968\n", encoding="latin-1"
    )
    return root
