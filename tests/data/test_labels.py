"""YOLO label parsing: good lines become boxes, every kind of bad line is skipped and reported."""

from __future__ import annotations

import numpy as np
import pytest

from uhd_core.data.labels import ParsedLabels, parse_label_text, read_label_file, select_classes


def test_good_lines_parse_to_cxcywh_and_integer_classes():
    text = "0 0.5 0.5 0.2 0.4\n3 0.25 0.75 0.1 0.3\n1.0 0.1 0.2 0.1 0.2\n"
    parsed = parse_label_text(text, "a.txt")
    assert parsed.issues == []
    assert parsed.boxes.dtype == np.float32 and parsed.boxes.shape == (3, 4)
    assert parsed.classes.dtype == np.int64
    assert parsed.classes.tolist() == [0, 3, 1]  # "1.0" is an integer class written as a float
    np.testing.assert_allclose(parsed.boxes, [[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.3], [0.1, 0.2, 0.1, 0.2]],
                               rtol=0, atol=1e-7)


def test_tabs_crlf_and_extra_spaces_are_fine():
    parsed = parse_label_text("0\t0.5  0.5 0.2\t0.4 \r\n  2 0.3 0.3 0.1 0.1\r\n")
    assert parsed.issues == []
    assert parsed.classes.tolist() == [0, 2]


BAD_LINES = [
    ("", "empty line"),
    ("   ", "empty line"),
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 fields"),
    ("0 a 0.5 0.2 0.2", "not numbers"),
    ("person 0.5 0.5 0.2 0.2", "not numbers"),
    ("-1 0.5 0.5 0.2 0.2", "non-negative integer"),
    ("0.5 0.5 0.5 0.2 0.2", "non-negative integer"),
    ("0 0.5 0.5 0 0.2", "w/h must be > 0"),
    ("0 0.5 0.5 0.2 -0.1", "w/h must be > 0"),
    ("0 1.5 0.5 0.2 0.2", "outside 0..1"),
    ("0 0.5 -0.2 0.2 0.2", "outside 0..1"),
    ("0 0.5 0.5 1.2 0.2", "outside 0..1"),
    ("0 nan 0.5 0.2 0.2", "non-finite"),
    ("0 0.5 0.5 inf 0.2", "non-finite"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[f"{i}:{r}" for i, (_, r) in enumerate(BAD_LINES)])
def test_each_bad_line_is_skipped_with_line_number_and_reason(line, reason):
    # The bad line sits between two good ones, so its line number is 2 and both neighbours survive.
    text = f"0 0.1 0.1 0.1 0.1\n{line}\n1 0.9 0.9 0.1 0.1\n"
    parsed = parse_label_text(text, "img_001.txt")
    assert parsed.classes.tolist() == [0, 1]
    assert len(parsed.boxes) == 2
    assert len(parsed.issues) == 1
    issue = parsed.issues[0]
    assert (issue.path, issue.line) == ("img_001.txt", 2)
    assert reason in issue.reason
    assert str(issue).startswith("img_001.txt:2: ")


def test_all_bad_kinds_together_report_every_line():
    lines = [line for line, _ in BAD_LINES]
    parsed = parse_label_text("\n".join(["0 0.5 0.5 0.2 0.2", *lines]), "x.txt")
    assert len(parsed.boxes) == 1
    assert [i.line for i in parsed.issues] == list(range(2, len(lines) + 2))
    for issue, (_, reason) in zip(parsed.issues, BAD_LINES):
        assert reason in issue.reason


def test_values_a_hair_outside_0_1_are_clipped_not_dropped():
    # 1 + 5e-7 is within the 1e-6 tolerance for float rounding in other tools' writers.
    parsed = parse_label_text("0 0.5 0.5 1.0000005 0.2\n0 -0.0000005 0.5 0.4 0.2\n")
    assert parsed.issues == []
    x1 = parsed.boxes[:, 0] - parsed.boxes[:, 2] / 2
    x2 = parsed.boxes[:, 0] + parsed.boxes[:, 2] / 2
    assert np.all(x1 >= -1e-7) and np.all(x2 <= 1 + 1e-7)
    np.testing.assert_allclose(parsed.boxes[0], [0.5, 0.5, 1.0, 0.2], atol=1e-6)
    # second box: x from -0.2000005 .. 0.1999995 -> clipped to 0 .. 0.1999995
    np.testing.assert_allclose(parsed.boxes[1], [0.1, 0.5, 0.2, 0.2], atol=1e-6)
    # but a clear overshoot is still an error
    bad = parse_label_text("0 0.5 0.5 1.00001 0.2\n")
    assert len(bad.boxes) == 0 and "outside 0..1" in bad.issues[0].reason


def test_box_sticking_out_of_the_image_is_clipped_to_its_visible_part():
    parsed = parse_label_text("0 0.95 0.1 0.2 0.4\n")
    assert parsed.issues == []
    # x: 0.85..1.05 -> 0.85..1.0 ; y: -0.1..0.3 -> 0.0..0.3
    np.testing.assert_allclose(parsed.boxes[0], [0.925, 0.15, 0.15, 0.3], atol=1e-6)


def test_box_with_no_area_inside_the_image_is_skipped():
    parsed = parse_label_text("0 -0.0000005 0.5 0.0000001 0.2\n")
    assert len(parsed.boxes) == 0
    assert parsed.issues[0].line == 1 and "no area" in parsed.issues[0].reason


def test_empty_text_means_no_boxes_and_no_issues():
    parsed = parse_label_text("")
    assert parsed.boxes.shape == (0, 4) and parsed.classes.shape == (0,) and parsed.issues == []


def test_read_label_file_missing_is_a_negative_image(tmp_path):
    parsed = read_label_file(tmp_path / "nope.txt")
    assert parsed.boxes.shape == (0, 4) and parsed.issues == []


def test_read_label_file_reports_undecodable_bytes_as_a_whole_file_issue(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\x00garbage\n")
    parsed = read_label_file(path)
    assert len(parsed.boxes) == 0
    assert len(parsed.issues) == 1 and parsed.issues[0].line == 0 and "unreadable" in parsed.issues[0].reason


def test_read_label_file_accepts_a_utf8_byte_order_mark(tmp_path):
    # Windows editors (Notepad) save UTF-8 with a BOM; the first label must not be lost to it.
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n".encode())
    parsed = read_label_file(path)
    assert parsed.issues == []
    assert parsed.classes.tolist() == [0, 1]


def _parsed(classes: list[int]) -> ParsedLabels:
    boxes = np.array([[0.1 * (i + 1), 0.5, 0.05, 0.05] for i in range(len(classes))], dtype=np.float32)
    return ParsedLabels(boxes.reshape(-1, 4), np.array(classes, dtype=np.int64))


def test_select_classes_maps_source_ids_in_the_given_order_and_drops_others():
    parsed = _parsed([1, 3, 0, 3, 2, 1])
    boxes, labels = select_classes(parsed, (3, 1))
    # (3, 1): source 3 -> 0, source 1 -> 1; 0 and 2 are dropped; box order is kept
    assert labels.dtype == np.int64
    assert labels.tolist() == [1, 0, 0, 1]
    np.testing.assert_array_equal(boxes, parsed.boxes[[0, 1, 3, 5]])


def test_select_classes_with_no_match_gives_empty_arrays():
    boxes, labels = select_classes(_parsed([2, 2]), (0,))
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    boxes, labels = select_classes(_parsed([]), (0, 1))
    assert boxes.shape == (0, 4) and labels.shape == (0,)
