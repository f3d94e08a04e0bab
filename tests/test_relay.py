"""The built-in OpenAI-compatible server, started detached as the deploy step does."""

import httpx
import pytest

from tasks.core import Command
from tasks.deploy import RelayServer, endpoints
from tasks import inference
from tasks.deploy.base import http_ready
from tasks.prompter import Prompter

from conftest import TINY_MODEL, greedy_by_hand


@pytest.fixture(scope="module")
def endpoint(fineflow_home):
    ep = endpoints.start("relay-test", RelayServer(name="tiny").cmd(str(TINY_MODEL)), "relay", str(TINY_MODEL))
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


@pytest.fixture(scope="module")
def tiny():
    return inference.load_model(str(TINY_MODEL))


def test_completions_equal_in_process_greedy_generation(endpoint, tiny):
    words = ["abc", "saw", "pen"]
    prompts = [inference.render_prompt("alpaca", {"instruction": "Convert the word to upper case.", "input": w})
               for w in words]
    expected = [greedy_by_hand(*tiny, p, 8) for p in prompts]
    assert all(e.strip() for e in expected), "the check needs answers that are not empty"
    one = httpx.post(f"{endpoint.url}/v1/completions", json={"prompt": prompts[0], "max_tokens": 8}, timeout=30)
    assert one.json()["choices"][0]["text"] == expected[0]
    many = httpx.post(f"{endpoint.url}/v1/completions", json={"prompt": prompts, "max_tokens": 8}, timeout=60)
    assert [(c["index"], c["text"]) for c in many.json()["choices"]] == list(enumerate(expected))
    # A smaller budget is honoured: the answer is the first tokens of the longer one.
    short = httpx.post(f"{endpoint.url}/v1/completions", json={"prompt": prompts[0], "max_tokens": 2}, timeout=30)
    assert short.json()["choices"][0]["text"] == greedy_by_hand(*tiny, prompts[0], 2)


def test_chat_renders_system_and_last_user_message_and_answers_as_in_process(endpoint, tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "Convert the word to upper case.\nsaw"}]
    prompt = inference.render_prompt("alpaca", {"messages": messages})
    assert prompt.count("Be brief.") == 1 and "hello" not in prompt and "saw" in prompt
    expected = greedy_by_hand(*tiny, prompt, 8)
    chat = httpx.post(f"{endpoint.url}/v1/chat/completions", json={"messages": messages, "max_tokens": 8},
                      timeout=30)
    assert chat.json()["choices"][0]["message"] == {"role": "assistant", "content": expected} and expected.strip()


def test_chat_without_a_user_message_is_refused(endpoint):
    for messages in ([], [{"role": "system", "content": "Be brief."}], [{"role": "assistant", "content": "hi"}]):
        resp = httpx.post(f"{endpoint.url}/v1/chat/completions", json={"messages": messages}, timeout=30)
        assert resp.status_code == 400 and "user message" in resp.text


def test_listing_and_stopping(fineflow_home):
    ep = endpoints.start("short-lived", RelayServer(name="short-lived").cmd(str(TINY_MODEL)), "relay",
                         str(TINY_MODEL))
    assert "short-lived" in [e.name for e in endpoints.list_endpoints()]
    assert endpoints.stop("short-lived") and not ep.alive()
    assert endpoints.get("short-lived") is None and not endpoints.stop("short-lived")


def test_failed_start_reports_log(fineflow_home):
    # The text is built at run time, so only the log's tail can put it in the message (not the command shown).
    command = Command(["python3", "-c", "print('no model' + ' here'); raise SystemExit(1)"],
                      return_value="http://127.0.0.1:9", checker=http_ready("http://127.0.0.1:9/health"),
                      ready_timeout_s=10)
    with pytest.raises(RuntimeError, match=r"failed its health check .*\(exited with code 1\)") as e:
        endpoints.start("broken", command, "relay", "none")
    head, _, tail = str(e.value).partition("; log ")
    assert "no model here" not in head and "no model here" in tail
    assert endpoints.get("broken") is None


def test_the_whole_command_runs_preparation_env_and_readiness(fineflow_home, tmp_path):
    """Every argv before the last runs to the end first; the server gets the command's env; the readiness probe
    decides when it is up."""
    marker = tmp_path / "prepared"
    port = endpoints.free_port()
    server = ("import http.server, os, pathlib; assert pathlib.Path(os.environ['MARKER']).exists(); "
              f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()")
    command = Command([["python3", "-c", "import os, pathlib; pathlib.Path(os.environ['MARKER']).touch()"],
                       ["python3", "-c", server]], return_value=f"http://127.0.0.1:{port}",
                      checker=http_ready(f"http://127.0.0.1:{port}/"), env={"MARKER": str(marker)}, ready_timeout_s=20)
    ep = endpoints.start("whole-command", command, "test", "none")
    try:
        assert marker.exists() and ep.argv == command.argvs[-1]
        assert httpx.get(f"{ep.url}/").status_code == 200
    finally:
        assert endpoints.stop("whole-command")
