"""Formatters: the reference's examples, the selection grammar, and clear errors for bad selectors."""

import json

import pytest

from tasks.formatter import (LAZYLLM_QUERY_PREFIX, EmptyFormatter, FileFormatter, FormatterError, FunctionCallFormatter,
                             JsonFormatter, JsonLikeFormatter, LazyLLMFormatterBase, PipelineFormatter, PythonFormatter,
                             YamlFormatter, decode_query_with_filepaths, encode_query_with_filepaths,
                             lazyllm_merge_query, make_formatter, package)

TITLES = ["# Application of Artificial Intelligence in the Medical Field", "## AI in Medical Diagnosis",
          "### AI in Medical Imaging"]
MODEL_OUTPUT = "Based on your user input, here is the corresponding list of nested dictionaries:\n" + json.dumps(
    [{"title": t, "describe": f"Please provide a detailed description of {t[t.index(' ') + 1:]}."} for t in TITLES],
    indent=4)


# -- reference examples ---------------------------------------------------------------------------------
def test_custom_formatter_reference_example():
    class MyFormatter(LazyLLMFormatterBase):
        def __init__(self, formatter: str = None):
            self._formatter = formatter
            if self._formatter:
                self._parse_formatter()
            else:
                self._slices = None

        def _parse_formatter(self):
            slice_str = self._formatter.strip()[1:-1]
            parts = slice_str.split(":")
            start = int(parts[0]) if parts[0] else None
            end = int(parts[1]) if len(parts) > 1 and parts[1] else None
            step = int(parts[2]) if len(parts) > 2 and parts[2] else None
            self._slices = [slice(start, end, step)]

        def _load(self, data):
            return [int(x) for x in data.strip("[]").split(",")]

        def _parse_py_data_by_formatter(self, data):
            if self._slices is None:
                return data
            result = []
            for s in self._slices:
                result.extend(data[s])
            return result

    assert MyFormatter("[1:3]").format("[1,2,3,4,5]") == [2, 3]


def test_json_formatter_reference_example():
    assert JsonFormatter("[:][title]")(MODEL_OUTPUT) == TITLES
    assert EmptyFormatter()(MODEL_OUTPUT) == MODEL_OUTPUT  # the reference's EmptyFormatter example


def test_yaml_formatter_reference_example():
    msg = "\nname: Alice\nage: 30\ncity: London\n"
    assert YamlFormatter("{name,age}")(msg) == {"name": "Alice", "age": 30}
    assert YamlFormatter("[name]")("```yaml\nname: Bob\n```") == "Bob"


def test_json_like_formatter_reference_forms():
    data = [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5, "c": 6}, {"a": 7, "b": 8, "c": 9}]
    assert JsonLikeFormatter("[{a,b}]")(data[0]) == {"a": 1, "b": 2}
    assert JsonLikeFormatter("[0][{a}]")(data) == {"a": 1}
    assert JsonLikeFormatter("[0,1][{a,b}]")(data) == [{"a": 1, "b": 2}, {"a": 4, "b": 5}]
    assert JsonLikeFormatter("[::2]")(data) == [data[0], data[2]]
    got = JsonLikeFormatter("*[0,1][{a}]")(data)
    assert isinstance(got, package) and got == ({"a": 1}, {"a": 4})


def test_file_query_reference_examples():
    encoded = encode_query_with_filepaths("Generate questions based on the document", files=["a.md"])
    assert encoded == '<lazyllm-query>{"query": "Generate questions based on the document", "files": ["a.md"]}'
    assert decode_query_with_filepaths('<lazyllm-query>{"query": "Summarize the content", "files": ["doc.md"]}') \
        == {"query": "Summarize the content", "files": ["doc.md"]}
    assert decode_query_with_filepaths("This is just a simple question") == "This is just a simple question"
    q1 = encode_query_with_filepaths("Please summarize document one", files=["doc1.md"])
    q2 = encode_query_with_filepaths("Add details from document two", files=["doc2.md"])
    assert lazyllm_merge_query(q1, q2) == ('<lazyllm-query>{"query": "Please summarize document oneAdd details '
                                           'from document two", "files": ["doc1.md", "doc2.md"]}')
    assert lazyllm_merge_query("What is AI?", "Explain deep learning.") == "What is AI?Explain deep learning."


def test_function_call_formatter_reference_examples():
    msg = {"role": "assistant", "content": "I will call a function to get the weather.",
           "tool_calls": [{"id": "call_123", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"location": "Beijing"}'}}],
           "other_field": "will be filtered"}
    result = FunctionCallFormatter().format(msg)
    assert str(result) == ("{'role': 'assistant', 'content': 'I will call a function to get the weather.', "
                           "'tool_calls': [{'id': 'call_123', 'type': 'function', 'function': {'name': "
                           "'get_weather', 'arguments': '{\"location\": \"Beijing\"}'}}]}")
    msg2 = {"role": "assistant", "content": "Hello, how can I help you?"}
    assert FunctionCallFormatter().format(msg2) == {"role": "assistant", "content": "Hello, how can I help you?"}


# -- behaviour the issue specifies -------------------------------------------------------------------------
def test_selection_grammar_on_lists_and_dicts():
    lst, tup = list(range(10)), tuple(range(10))
    assert JsonLikeFormatter("[0]")(lst) == 0
    assert JsonLikeFormatter("[0, 3, 6]")(lst) == [0, 3, 6]
    assert JsonLikeFormatter("[0, 3, 6]")(tup) == (0, 3, 6)
    assert JsonLikeFormatter("[0:7:3]")(tup) == (0, 3, 6)
    assert JsonLikeFormatter("[:]")(tup) == tup and isinstance(JsonLikeFormatter("[:]")(tup), tuple)
    d = {"a": 1, "b": 2, "c": 3}
    assert JsonLikeFormatter("[a]")(d) == 1
    assert JsonLikeFormatter("[a, c]")(d) == [1, 3]
    assert JsonLikeFormatter("[:]")(d) == [1, 2, 3]
    assert JsonLikeFormatter("{a, c}")(d) == {"a": 1, "c": 3}
    assert JsonLikeFormatter("{:}")(d) == d
    rows = [{"a": [1, 2], "b": [3, 4], "c": [5, 6]}, {"a": [7, 8], "b": [0, 0], "c": [9, 10]}]
    assert JsonLikeFormatter("[:]{a, c}[1]")(rows) == [{"a": 2, "c": 6}, {"a": 8, "c": 10}]
    assert JsonLikeFormatter(None)(rows) is rows


def test_json_formatter_extracts_objects_from_free_text():
    text = 'First {"a": 1, "s": "a } inside [a string]"} then [1, 2] and {"b": {"c": [3]}} done.'
    assert JsonFormatter()(text) == [{"a": 1, "s": "a } inside [a string]"}, [1, 2], {"b": {"c": [3]}}]
    assert JsonFormatter("[2][b][c][0]")(text) == 3
    assert JsonFormatter()('no json (see [note]) here') == 'no json (see [note]) here'
    # Broken JSON is repaired: unquoted keys, single quotes, trailing commas, a truncated tail.
    assert JsonFormatter()("{name: 'x', 'n': 2,}") == {"name": "x", "n": 2}
    assert JsonFormatter("[items][1]")('answer: {"items": [1, 2, 3') == 2
    with pytest.raises(FormatterError, match="no JSON object or array"):
        JsonFormatter("[a]")("plain text")


def test_python_formatter_reads_literals():
    assert PythonFormatter("[1]")("(1, 'two', 3)") == "two"
    assert PythonFormatter("{x}")({"x": 1, "y": 2}) == {"x": 1}
    assert PythonFormatter()("not a literal") == "not a literal"


def test_empty_formatter_messages():
    assert EmptyFormatter()({"role": "assistant", "content": "hi", "reasoning_content": "think"}) == \
        "<think>think</think>hi"
    assert EmptyFormatter()(["kept", 1]) == ["kept", 1]
    with pytest.warns(UserWarning, match="FunctionCallFormatter"):
        assert EmptyFormatter()({"role": "assistant", "content": "x", "tool_calls": [{"id": 1}]}) == "x"


def test_function_call_formatter_drops_index_and_never_mutates():
    msg = {"role": "assistant", "content": "", "reasoning_content": "r", "extra": 1,
           "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]}
    before = json.dumps(msg, sort_keys=True)
    out = FunctionCallFormatter()(msg)
    assert out == {"role": "assistant", "content": "", "reasoning_content": "r",
                   "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}
    assert json.dumps(msg, sort_keys=True) == before
    out["tool_calls"][0]["function"]["name"] = "changed"
    assert msg["tool_calls"][0]["function"]["name"] == "f"
    with pytest.raises(FormatterError, match="expects a message dict, got str"):
        FunctionCallFormatter()("text")


def test_file_formatter_modes_and_packages():
    q = encode_query_with_filepaths("q", ["f.md"])
    assert FileFormatter()(q) == {"query": "q", "files": ["f.md"]}
    assert FileFormatter("encode")({"query": "q", "files": ["f.md"]}) == q
    assert FileFormatter("decode")(q, "plain") == package(({"query": "q", "files": ["f.md"]}, "plain"))
    assert FileFormatter("merge")(q, "more") == encode_query_with_filepaths("qmore", ["f.md"])
    assert FileFormatter("merge")("single") == "single"
    with pytest.raises(FormatterError, match="mode must be one of decode, encode, merge"):
        FileFormatter("zip")


def test_query_encoding_errors():
    with pytest.raises(AssertionError, match="files must be a str or a list of str"):
        encode_query_with_filepaths("q", files=[1])
    with pytest.raises(TypeError, match="query_files must be a str"):
        decode_query_with_filepaths(["x"])
    with pytest.raises(ValueError, match="JSON parsing failed"):
        decode_query_with_filepaths(LAZYLLM_QUERY_PREFIX + "{broken")
    assert encode_query_with_filepaths("q", "one.md") == encode_query_with_filepaths("q", ["one.md"])


def test_composition_with_pipe():
    fmt = JsonFormatter("[answer]") | (lambda s: s.upper()) | EmptyFormatter()
    assert isinstance(fmt, PipelineFormatter)
    assert fmt('model says {"answer": "yes"}') == "YES"
    assert len(fmt._steps) == 3  # nested pipelines are flattened
    with pytest.raises(TypeError, match="not callable"):
        JsonFormatter() | 3


@pytest.mark.parametrize("selector, problem", [
    ("[", "is never closed"), ("[0", "is never closed"), ("{a", "is never closed"),
    ("[]", "empty"), ("[a, 1:2]", "mixes a slice and a list"), ("[1:x]", "is not an integer"),
    ("[1:2:3:4]", "more than two ':'"), ("{a:b}", "mixes keys and ':'"), ("x[0]", "expected '\\[' or '\\{'"),
    ("*{a}", "'\\*' must be followed by '\\['"), ("[0]*[1]", "expected '\\[' or '\\{'"),
])
def test_bad_selectors_raise_clear_errors(selector, problem):
    with pytest.raises(FormatterError, match=problem):
        JsonLikeFormatter(selector)


@pytest.mark.parametrize("selector, data, problem", [
    ("[5]", [1, 2], "index 5 in \\[5\\] is out of range for a list of length 2"),
    ("[a]", {"b": 1}, "key 'a' of \\[a\\] is not in the dict with keys \\['b'\\]"),
    ("[x]", [1], "needs an integer index"),
    ("{a}", [1], "selects dict keys, but got a list"),
    ("[1:2]", {"a": 1}, "a dict takes only"),
    ("[0]", 7, "cannot apply \\[0\\] to a int"),
])
def test_selectors_that_do_not_fit_the_data(selector, data, problem):
    with pytest.raises(FormatterError, match=problem):
        JsonLikeFormatter(selector)(data)


def test_make_formatter_by_name():
    assert make_formatter("json", "[a]")('{"a": 1}') == 1
    assert isinstance(make_formatter(), EmptyFormatter)
    with pytest.raises(FormatterError, match="unknown formatter 'xml'; known: empty, json"):
        make_formatter("xml")
    with pytest.raises(FormatterError, match="takes no selector"):
        make_formatter("empty", "[0]")


# -- edges: messages, warnings, composition errors ------------------------------------------------------------
def test_empty_formatter_reads_a_message_by_its_content_or_role():
    empty = EmptyFormatter()
    assert empty({"content": "hi"}) == "hi" and empty({"role": "assistant"}) == ""
    assert empty({"role": "assistant", "content": None}) == ""
    assert empty({"other": 1}) == {"other": 1} and empty(["content"]) == ["content"]
    assert empty({"content": "b", "reasoning_content": "a"}) == "<think>a</think>b"


def test_empty_formatter_warns_where_the_caller_dropped_tool_calls():
    def caller():
        return EmptyFormatter()({"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]})

    message = {"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}
    with pytest.warns(UserWarning) as record:
        assert caller() == "x"
        assert EmptyFormatter().format(message) == "x"
        assert (PipelineFormatter([lambda m: m]) | EmptyFormatter())(message) == "x"
    assert str(record[0].message) == ("EmptyFormatter drops the message's tool_calls; use FunctionCallFormatter to "
                                      "keep them")
    # Each points at the code that called the formatter (the first frame outside the formatter package; under a
    # mutation tester that is its wrapper), never inside the package.
    assert len(record) == 3 and not any("/tasks/formatter/" in r.filename for r in record)


def test_formatter_errors_name_the_type():
    class Half(LazyLLMFormatterBase):
        pass

    with pytest.raises(NotImplementedError, match="^Half does not define _parse_py_data_by_formatter$"):
        Half()("x")
    assert repr(Half()) == "<fineflow.Half>" and repr(EmptyFormatter()) == "<fineflow.EmptyFormatter>"
    with pytest.raises(TypeError, match="^cannot compose a formatter with int: it is not callable$"):
        EmptyFormatter() | 3
    with pytest.raises(TypeError, match="^PipelineFormatter steps must be callable, got str$"):
        PipelineFormatter([str.upper, "x"])


def test_pipelines_flatten_and_a_single_callable_is_one_step():
    inner = PipelineFormatter([str.strip, str.upper])
    outer = PipelineFormatter([inner, lambda s: s + "!"])
    assert outer._steps[:2] == [str.strip, str.upper] and len(outer._steps) == 3 and outer(" a ") == "A!"
    assert PipelineFormatter(str.upper)("a") == "A" and len(PipelineFormatter(str.upper)._steps) == 1
    assert PipelineFormatter((str.strip, str.upper))(" b ") == "B"


def test_file_formatter_modes_on_plain_values():
    encoded = encode_query_with_filepaths("q", ["a.png"])
    assert FileFormatter()(encoded) == {"query": "q", "files": ["a.png"]}  # decode is the default
    assert FileFormatter(" Decode ")(encoded) == {"query": "q", "files": ["a.png"]}
    assert FileFormatter("decode")({"query": "q"}) == {"query": "q"}  # not a string: unchanged
    assert FileFormatter("merge")("only one") == "only one"  # not several: unchanged
    assert FileFormatter("encode")({"query": "q"}) == {"query": "q"}  # not a query/files dict: unchanged
    assert FileFormatter("encode")(["query", "files"]) == ["query", "files"]
    assert FileFormatter("encode")({"query": "q", "files": ["a.png"]}) == encoded


def test_json_is_found_around_brackets_and_escaped_quotes_inside_strings():
    from tasks.formatter import extract_json

    text = 'see {"a": "x } y", "b": "quote \\" } ] inside", "c": [1, {"d": "\\\\"}]} and [2, 3] and {"e": ":"}'
    assert extract_json(text) == [{"a": "x } y", "b": 'quote " } ] inside', "c": [1, {"d": "\\"}]}, [2, 3], {"e": ":"}]
    assert extract_json('"not a string start" {"k": "v"}') == [{"k": "v"}]
    assert extract_json("[see above] then {}") == [{}]  # prose in brackets is not JSON; {} is
    assert extract_json('text {"') == [] and extract_json("{:}") == []  # repairs that give nothing are not answers
    assert extract_json('{"a": 1,') == [{"a": 1}]  # an unclosed object at the end is repaired


def test_yaml_errors_say_so():
    with pytest.raises(FormatterError, match="^the model output is not valid YAML: "):
        YamlFormatter()("a: [1, 2\nb: c")


def test_selector_errors_describe_the_data_briefly():
    with pytest.raises(FormatterError) as e:
        JsonFormatter("[z]")(json.dumps({f"k{i}": i for i in range(12)}))
    assert "dict with keys ['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', 'k8', 'k9']" in str(e.value)
    with pytest.raises(FormatterError) as e:
        JsonLikeFormatter("[0]")(7)
    assert str(e.value).endswith("to a int '7'") or "int '7'" in str(e.value)
    with pytest.raises(FormatterError) as e:
        JsonLikeFormatter("[0]")(3.25 * 10 ** 50)
    assert f"float {str(3.25 * 10 ** 50)[:40]!r}" in str(e.value)


def test_file_query_helpers_refuse_wrong_types_and_merge_partial_queries():
    with pytest.raises(TypeError, match="^query must be a str, got int$"):
        encode_query_with_filepaths(3)
    with pytest.raises(TypeError, match="^query_files must be a str, got list$"):
        decode_query_with_filepaths(["q"])
    only_files = LAZYLLM_QUERY_PREFIX + json.dumps({"files": ["a.png"]})
    no_files = LAZYLLM_QUERY_PREFIX + json.dumps({"query": "q", "other": 1})
    assert decode_query_with_filepaths(lazyllm_merge_query("x", only_files, no_files)) == \
        {"query": "xq", "files": ["a.png"]}
    assert FileFormatter("merge")(encode_query_with_filepaths("q", ["b.png"])) == \
        encode_query_with_filepaths("q", ["b.png"])  # one query: unchanged, not re-encoded


def test_selector_keys_quoted_and_integer():
    data = {"a b": 1, "'x'": 2, "q": 3, 7: "seven", '"': "quote"}
    assert JsonLikeFormatter("['a b']")(data) == 1 and JsonLikeFormatter('["a b"]')(data) == 1
    assert JsonLikeFormatter("[q]")(data) == 3 and JsonLikeFormatter("['q']")(data) == 3
    assert JsonLikeFormatter("[7]")(data) == "seven"  # an integer key of a dict
    assert JsonLikeFormatter("[\"]")(data) == "quote"  # one quote is a key, not an empty quoted key
    assert JsonLikeFormatter("['q\"]")({"'q\"": 5}) == 5  # quotes that do not match stay
    with pytest.raises(FormatterError, match=r"key '8' of \[8\] is not in the dict with keys"):
        JsonLikeFormatter("[8]")(data)
    with pytest.raises(FormatterError, match=r"needs an integer index on a list of length 2, got 'x'"):
        JsonLikeFormatter("[x]")([1, 2])


def test_json_scanning_moves_on_past_text_and_failed_brackets():
    from tasks.formatter import extract_json

    assert extract_json('ab [x y] {"k": 1} [2]') == [{"k": 1}, [2]]
    assert extract_json('{"a": "b\\\\"} {"c": 1}') == [{"a": "b\\"}, {"c": 1}]  # an escaped backslash ends
    assert extract_json('{"a": "}"}') == [{"a": "}"}]
    long_prose = "no json here " * 10
    with pytest.raises(FormatterError) as e:
        JsonFormatter("[0]")(long_prose)
    assert f"{long_prose[:80]!r}; cannot apply" in str(e.value)


@pytest.mark.parametrize("selector, data, message", [
    ("[a][b]", {"a": {"c": 1}}, "selector '[a][b]': key 'b' of [b] is not in the dict with keys ['c']"),
    ("[a, x][b]", {"a": {"b": 1}, "x": {"c": 2}},
     "selector '[a, x][b]': key 'b' of [b] is not in the dict with keys ['c']"),
    ("[0:2][b]", [{"b": 1}, {"c": 2}], "selector '[0:2][b]': key 'b' of [b] is not in the dict with keys ['c']"),
    ("[:][b]", {"k": {"c": 2}}, "selector '[:][b]': key 'b' of [b] is not in the dict with keys ['c']"),
    ("{a}[b]", {"a": {"c": 1}}, "selector '{a}[b]': key 'b' of [b] is not in the dict with keys ['c']"),
    ("{a, z}", {"a": 1}, "selector '{a, z}': key 'z' of {a, z} is not in the dict with keys ['a']"),
    ("[a, q]", {"a": 1}, "selector '[a, q]': key 'q' of [a, q] is not in the dict with keys ['a']"),
    ("[1:2]", {"a": 1}, "selector '[1:2]': a dict takes only [:] or {:}, not [1:2]"),
    ("[:]", 5, "selector '[:]': cannot apply [:] to a int '5'"),
    ("{a}", [1], "selector '{a}': {a} selects dict keys, but got a list of length 1"),
    ("[a[b]]", {}, "selector '[a[b]]': unexpected bracket or '*' inside '[a[b]'"),
    ("[0][a", {}, "selector '[0][a': '[' at position 3 is never closed"),
    ("[a*]", {}, "selector '[a*]': unexpected bracket or '*' inside '[a*]'"),
    ("[a{b]", {}, "selector '[a{b]': unexpected bracket or '*' inside '[a{b]'"),
    ("  ", {}, None),
    ("[x:y]", [], "selector '[x:y]': slice bound 'x' is not an integer"),
    ("[ ]", [], "selector '[ ]': empty '[ ]'"),
    ("[0]x", [1], "selector '[0]x': expected '[' or '{' at position 3, got 'x'"),
])
def test_selector_errors_name_the_whole_selector_and_the_step(selector, data, message):
    with pytest.raises(FormatterError) as e:
        JsonLikeFormatter(selector)(data)
    if message is None:  # blank: selects nothing, or no selector at all
        assert "selects nothing" in str(e.value)
    else:
        assert str(e.value) == message


def test_slices_with_none_bounds_and_containers_keep_their_type():
    assert JsonLikeFormatter("[None:2]")([1, 2, 3]) == [1, 2]
    assert JsonLikeFormatter("[1:None]")((1, 2, 3)) == (2, 3)
    assert JsonLikeFormatter("[0, 2]")((1, 2, 3)) == (1, 3)
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    assert JsonLikeFormatter("[0, 1]")(Pair(1, 2)) == (1, 2)  # a namedtuple cannot be rebuilt from a list
    assert JsonLikeFormatter("[:]")(Pair(3, 4)) == (3, 4)
    assert JsonLikeFormatter(" [0] ")([7]) == 7 and JsonLikeFormatter("[0] [0]")([[8]]) == 8
    assert JsonLikeFormatter("{:}")({"a": 1, "b": 2}) == {"a": 1, "b": 2}
