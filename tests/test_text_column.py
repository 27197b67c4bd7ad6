import gc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcenet.text_column import TextColumn, TextColumnWriter


def column_of(texts: list[str]) -> TextColumn:
    writer = TextColumnWriter()
    for text in texts:
        writer.append(text)
    return writer.finish()


@given(st.lists(st.text(), max_size=30))
def test_texts_read_back_as_written(texts):
    column = column_of(texts)
    assert len(column) == len(texts)
    assert list(column) == texts
    assert column[:] == texts and column[1::2] == texts[1::2]
    if texts:
        assert column[-1] == texts[-1] and column[len(texts) // 2] == texts[len(texts) // 2]


def test_a_view_takes_rows_in_the_order_asked_and_outlives_its_source():
    texts = [f"document {i} é ✓" for i in range(10)]
    column = column_of(texts)
    view = column.take(np.array([7, 2, 2, 9]))
    del column
    gc.collect()  # the file stays open while a view of it is alive
    assert list(view) == [texts[7], texts[2], texts[2], texts[9]]
    assert list(view.take([3, 0])) == [texts[9], texts[7]]


def test_an_index_outside_the_column_is_refused():
    column = column_of(["a", "b"])
    with pytest.raises(IndexError):
        column[2]
    with pytest.raises(IndexError):
        column[-3]


def test_memory_holds_byte_ranges_not_texts():
    column = column_of(["x" * 10_000] * 100)
    assert column.resident_bytes == 100 * 16  # a start and a length per text; the megabyte stays on disk
