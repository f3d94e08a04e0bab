"""Property tests: the selection grammar against plain indexing, and round trips of the query encoding."""

import json
import os
from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.formatter import (JsonFormatter, JsonLikeFormatter, decode_query_with_filepaths, encode_query_with_filepaths,
                             lazyllm_merge_query)

settings.register_profile("fineflow", max_examples=200, deadline=None)
# bench/mutation.py runs these once per mutant: fewer examples, the same ones every time.
settings.register_profile("mutation", max_examples=40, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("FINEFLOW_HYPOTHESIS_PROFILE", "fineflow"))

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
scalars = st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none())
sequences = st.one_of(st.lists(scalars, max_size=12), st.lists(scalars, max_size=12).map(tuple))
json_values = st.recursive(st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.none()),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
bound = st.one_of(st.none(), st.integers(-14, 14))


def fmt_bound(b):
    return "" if b is None else str(b)


@given(sequences, bound, bound, st.one_of(st.none(), st.integers(1, 4), st.integers(-4, -1)))
def test_slices_keep_the_container_type(data, start, stop, step):
    selector = f"[{fmt_bound(start)}:{fmt_bound(stop)}:{fmt_bound(step)}]"
    got = JsonLikeFormatter(selector)(data)
    assert type(got) is type(data)
    assert got == data[start:stop:step]


@given(sequences.filter(len), st.data())
def test_index_lists_keep_the_container_type(data, draw):
    idx = draw.draw(st.lists(st.integers(-len(data), len(data) - 1), min_size=2, max_size=6))
    got = JsonLikeFormatter("[" + ", ".join(map(str, idx)) + "]")(data)
    assert type(got) is type(data)
    assert list(got) == [data[i] for i in idx]


@given(st.dictionaries(keys, scalars, min_size=1), st.data())
def test_dict_selections(data, draw):
    chosen = draw.draw(st.lists(st.sampled_from(sorted(data)), min_size=1, max_size=4, unique=True))
    names = ", ".join(chosen)
    assert JsonLikeFormatter("{" + names + "}")(data) == {k: data[k] for k in chosen}
    if len(chosen) > 1:
        assert JsonLikeFormatter("[" + names + "]")(data) == [data[k] for k in chosen]
    assert JsonLikeFormatter("[:]")(data) == list(data.values())
    assert JsonLikeFormatter("{:}")(data) == data


@given(st.lists(st.fixed_dictionaries({"a": st.lists(st.integers(), min_size=3, max_size=3),
                                       "b": st.lists(st.integers(), min_size=3, max_size=3),
                                       "c": st.lists(st.integers(), min_size=3, max_size=3)}), max_size=5),
       st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True), st.integers(0, 2))
def test_chains_apply_to_each_selected_item(rows, chosen, j):
    selector = "[:]{" + ", ".join(chosen) + "}" + f"[{j}]"
    assert JsonLikeFormatter(selector)(rows) == [{k: row[k][j] for k in chosen} for row in rows]


def _paths(value, prefix=()):
    """Every path of single keys/indices into ``value``."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@given(json_values, st.data())
def test_single_step_chains_equal_manual_indexing(value, draw):
    path = draw.draw(st.sampled_from(list(_paths(value))))
    if not path:
        return
    selector = "".join(f"[{p}]" for p in path)
    assert JsonLikeFormatter(selector)(value) == reduce(lambda v, p: v[p], path, value)


@given(st.one_of(st.lists(json_values, min_size=1, max_size=3), st.dictionaries(keys, json_values, min_size=1)),
       st.text(alphabet="abc xyz.,!?\n", max_size=20), st.text(alphabet="abc xyz.,!?\n", max_size=20))
def test_json_in_free_text_is_found(value, before, after):
    assert JsonFormatter()(before + json.dumps(value, ensure_ascii=False) + after) == value


queries = st.text(max_size=30)
file_lists = st.lists(st.text(min_size=1, max_size=12), max_size=4)


@given(queries, file_lists)
def test_encode_decode_round_trip(query, files):
    decoded = decode_query_with_filepaths(encode_query_with_filepaths(query, files))
    assert decoded == ({"query": query, "files": files} if files else query)


@given(st.lists(st.tuples(queries, file_lists), min_size=2, max_size=4))
def test_merge_concatenates_queries_and_files(parts):
    merged = decode_query_with_filepaths(lazyllm_merge_query(*(encode_query_with_filepaths(q, f) for q, f in parts)))
    files = [f for _, fs in parts for f in fs]
    query = "".join(q for q, _ in parts)
    assert merged == ({"query": query, "files": files} if files else query)


@given(st.text(alphabet=" \n", max_size=3), queries)
def test_plain_queries_that_look_encoded_survive(space, tail):
    query = space + "<lazyllm-query>" + tail
    assert decode_query_with_filepaths(encode_query_with_filepaths(query)) == query
