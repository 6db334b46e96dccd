import pytest

from auformer.aus import (
    AU_NAMES,
    BP4D_AUS,
    au_column,
    au_columns,
    au_label,
    au_name,
    parse_au,
    parse_au_list,
)


@pytest.mark.parametrize(
    "token, number",
    [
        ("AU1", 1),
        ("AU01", 1),
        ("1", 1),
        ("au 12", 12),
        ("R12", 12),
        ("L1", 1),
        ("AU12R", 12),
        ("12.0", 12),
        (26, 26),
        ("B25", 25),
    ],
)
def test_parse_au_forms(token, number):
    assert parse_au(token) == number


def test_parse_au_list_forms_and_deduplication():
    assert parse_au_list("1+2+4") == [1, 2, 4]
    assert parse_au_list("AU1, AU02;4") == [1, 2, 4]
    assert parse_au_list("R12+L12+25") == [12, 25]
    assert parse_au_list(["AU06", 12]) == [6, 12]
    assert parse_au_list("") == []


def test_unknown_au_is_rejected_with_hint():
    with pytest.raises(ValueError, match="AU3 is not a FACS action unit"):
        parse_au("AU3")
    with pytest.raises(ValueError, match="cannot parse AU 'smile'"):
        parse_au("smile")


def test_column_names_and_labels():
    assert au_column(1) == "AU01"
    assert au_column("R12") == "AU12"
    assert au_columns(BP4D_AUS)[:3] == ["AU01", "AU02", "AU04"]
    assert au_name("AU12") == "Lip Corner Puller"
    assert au_label(4) == "AU4 Brow Lowerer"
    assert all(number in AU_NAMES for number in BP4D_AUS)
