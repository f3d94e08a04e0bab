"""The built-in OpenAI-compatible server, started detached as the deploy step does."""

import httpx
import pytest

from tasks.deploy import RelayServer
from tasks.deploy import endpoints
from tasks.prompter import Prompter

from conftest import TINY_MODEL


@pytest.fixture(scope="module")
def endpoint(fineflow_home):
    command = RelayServer(name="tiny").cmd(str(TINY_MODEL))
    ep = endpoints.start_detached("relay-test", command.argvs[0], command.return_value, "relay", str(TINY_MODEL))
    yield ep
    endpoints.stop("relay-test")


def test_routes(endpoint):
    assert httpx.get(f"{endpoint.url}/health").json() == {"status": "ok", "model": "tiny"}
    assert httpx.get(f"{endpoint.url}/v1/models").json()["data"][0]["id"] == "tiny"
    prompt = "upper: abc ->"
    resp = httpx.post(f"{endpoint.url}/v1/completions", json={"prompt": prompt, "max_tokens": 6}, timeout=30)
    text = RelayServer.extract_result(resp, prompt)
    assert isinstance(text, str) and resp.json()["object"] == "text_completion"
    chat = httpx.post(f"{endpoint.url}/v1/chat/completions", timeout=30,
                      json={"messages": [{"role": "user", "content": "Convert the word to upper case."}]})
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(RelayServer.extract_result(chat, None), str)
    bad = httpx.post(f"{endpoint.url}/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert bad.status_code == 400 and "max_tokens" in bad.text


def test_completion_is_greedy_and_stable(endpoint):
    prompt = Prompter.from_template("alpaca").generate_prompt({"instruction": "Convert the word to upper case.",
                                                               "input": "abc"})
    answers = {httpx.post(f"{endpoint.url}/v1/completions", json={"prompt": prompt, "max_tokens": 8},
                          timeout=30).json()["choices"][0]["text"] for _ in range(2)}
    assert len(answers) == 1


def test_listing_and_stopping(fineflow_home):
    command = RelayServer(name="short-lived").cmd(str(TINY_MODEL))
    ep = endpoints.start_detached("short-lived", command.argvs[0], command.return_value, "relay", str(TINY_MODEL))
    assert "short-lived" in [e.name for e in endpoints.list_endpoints()]
    assert endpoints.stop("short-lived") and not ep.alive()
    assert endpoints.get("short-lived") is None and not endpoints.stop("short-lived")


def test_failed_start_reports_log(fineflow_home):
    with pytest.raises(RuntimeError, match="failed its health check"):
        endpoints.start_detached("broken", ["python3", "-c", "print('no model here'); raise SystemExit(1)"],
                                 "http://127.0.0.1:9", "relay", "none", timeout_s=10)
    assert endpoints.get("broken") is None
