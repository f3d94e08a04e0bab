"""The built-in servers' OpenAI surface, in-process: the error shape clients read, the access-log filter that keeps
query strings out of log files, and the sampling fields' stop list."""

from __future__ import annotations

import json
import logging

import pytest

from tasks.servers.openai_api import ApiError, CompletionRequest, NoQueryStrings, error_response


def access_record(path: str, args: tuple | None = None) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it: client, method, path with query, HTTP version, status."""
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             args if args is not None else ("127.0.0.1:5000", "GET", path, "1.1", 401), None)


def test_the_access_log_hides_a_query_string_and_keeps_the_rest():
    record = access_record("/v1/models?api_key=sk-secret&x=1")
    assert NoQueryStrings().filter(record) is True
    assert record.args == ("127.0.0.1:5000", "GET", "/v1/models?[query hidden]", "1.1", 401)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/models?[query hidden] HTTP/1.1" 401'


def test_a_query_with_a_question_mark_inside_is_hidden_whole_and_three_args_are_enough():
    record = access_record("/v1/models?key=a?b")
    NoQueryStrings().filter(record)
    assert record.args[2] == "/v1/models?[query hidden]"
    record = access_record("", ("127.0.0.1:5000", "GET", "/v1/models?key=sk"))
    assert NoQueryStrings().filter(record) is True
    assert record.args == ("127.0.0.1:5000", "GET", "/v1/models?[query hidden]")


@pytest.mark.parametrize("args", [("127.0.0.1:5000", "GET", "/v1/models", "1.1", 200),  # no query: as it was
                                  ("127.0.0.1:5000", "GET"),  # not an access line
                                  ("127.0.0.1:5000", "GET", 3, "1.1", 200)])
def test_other_records_pass_unchanged(args):
    record = access_record("", args)
    assert NoQueryStrings().filter(record) is True and record.args == args


def test_a_record_without_a_tuple_of_args_passes_unchanged():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "plain ?q=1", None, None)
    assert NoQueryStrings().filter(record) is True and record.args is None and record.getMessage() == "plain ?q=1"


@pytest.mark.parametrize("status, kind", [(401, "authentication_error"), (500, "server_error"),
                                          (400, "invalid_request_error"), (404, "invalid_request_error"),
                                          (413, "invalid_request_error")])
def test_errors_have_openais_shape(status, kind):
    response = error_response(status, "what went wrong", "temperature")
    assert response.status_code == status
    assert json.loads(response.body) == {"error": {"message": "what went wrong", "type": kind,
                                                   "param": "temperature", "code": None}}
    assert json.loads(error_response(status, "m").body)["error"]["param"] is None


def test_an_api_error_carries_its_status_message_and_field():
    e = ApiError(400, "max_tokens is over 64", "max_tokens")
    assert (e.status, e.message, e.param, str(e)) == (400, "max_tokens is over 64", "max_tokens",
                                                      "max_tokens is over 64")
    assert ApiError(500, "m").param is None


@pytest.mark.parametrize("stop, stops", [(None, []), ("###", ["###"]), (["a", "", "b"], ["a", "b"]), ([], [])])
def test_the_stop_list_is_the_non_empty_sequences_given(stop, stops):
    assert CompletionRequest(prompt="p", stop=stop).stops() == stops


def test_the_server_of_a_built_in_app_bounds_request_heads_and_filters_its_access_log():
    from fastapi import FastAPI

    from tasks.servers.header_deadline import HeaderDeadline
    from tasks.servers.openai_api import uvicorn_server

    access = logging.getLogger("uvicorn.access")
    before = list(access.filters)
    try:
        server = uvicorn_server(FastAPI(), "127.0.0.1", 1)
        assert (server.config.host, server.config.port, server.config.http) == ("127.0.0.1", 1, HeaderDeadline)
        assert [f for f in access.filters if f not in before and isinstance(f, NoQueryStrings)]
    finally:
        access.filters[:] = before
