"""The built-in OpenAI-compatible server: its routes checked on the server started detached as the deploy step
does, and on the same app in this process (where a test can see which code ran)."""

import json
import shutil
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tasks import inference, net
from tasks.core import Command
from tasks.deploy import RelayServer
from tasks.inference.prompts import load_tokenizer
from tasks.net import ready as http_ready
from tasks.servers.relay import create_app, parse_args, server
from tasks.serving import endpoints
from tests.support.models import greedy_by_hand
from tests.support.paths import TINY_MODEL

INSTRUCTION = "Convert the word to upper case."


@pytest.fixture(scope="module")
def endpoint(fineflow_home):
    ep = endpoints.start("relay-test", RelayServer(name="tiny").cmd(str(TINY_MODEL)), "relay", str(TINY_MODEL))
    yield ep
    endpoints.stop("relay-test")


@pytest.fixture(params=["served", "in-process"])
def client(request):
    """The served endpoint (one for the module), or the app made anew for each test in this process (so the test
    that exercises a route is the one that made it)."""
    if request.param == "served":
        with httpx.Client(base_url=request.getfixturevalue("endpoint").url, timeout=60) as c:
            yield c
    else:
        with TestClient(create_app(str(TINY_MODEL), "tiny")) as c:
            yield c


@pytest.fixture(scope="module")
def tiny():
    return inference.load_model(str(TINY_MODEL))


def test_server_arguments_and_their_defaults():
    assert vars(parse_args(["--model", "m", "--port", "8001"])) == {
        "model": "m", "port": 8001, "host": "127.0.0.1", "name": "fineflow-model", "prompt_style": "alpaca",
        "max_tokens": 512, "max_body_bytes": 1_000_000, "max_batch": 16, "batch_wait_ms": 5, "threads": 1,
        "device": "auto", "max_adapters": 0, "adapter": [], "adapter_root": [], "adapter_state": None,
        "base_revision": None}
    given = vars(parse_args(["--model", "m", "--port", "1", "--threads", "2", "--max-adapters", "3", "--adapter",
                             "a=/x", "--adapter", "b=/y", "--adapter-root", "/r", "--adapter-root", "/s",
                             "--batch-wait-ms", "2.5", "--device", "cpu"]))
    assert {k: given[k] for k in ("threads", "max_adapters", "adapter", "adapter_root", "batch_wait_ms", "device")} \
        == {"threads": 2, "max_adapters": 3, "adapter": ["a=/x", "b=/y"], "adapter_root": ["/r", "/s"],
            "batch_wait_ms": 2.5, "device": "cpu"}
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--port", "1", "--device", "gpu"])  # auto, cpu or cuda only
    argv = RelayServer(name="n", port=8002, prompt_style="chat_template").cmd("/models/x").argvs[-1]
    args = parse_args(argv[argv.index("tasks.servers.relay") + 1:])
    assert (args.model, args.port, args.host, args.name, args.prompt_style, args.device) == \
        ("/models/x", 8002, "127.0.0.1", "n", "chat_template", "auto")
    argv = RelayServer(name="n", device="cpu").cmd("/models/x").argvs[-1]
    assert parse_args(argv[argv.index("tasks.servers.relay") + 1:]).device == "cpu"


def test_a_gpu_asked_for_where_there_is_none_is_refused_at_once(monkeypatch):
    """``device: cuda`` on a machine without CUDA: the engine's preflight refuses before anything starts, and so
    does the server's own command line; ``auto`` decodes on the CPU here and says so."""
    import torch

    from tasks.deploy import EngineUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what CI's machines have; also on a GPU box
    with pytest.raises(EngineUnavailableError, match=r"RelayServer cannot start here: missing a CUDA GPU \(device: "
                                                     r"cuda; use device: cpu or auto on this machine\) \(this machine "
                                                     r"has 0 CUDA device\(s\)"):
        RelayServer(name="n", device="cuda").preflight()
    RelayServer(name="n", device="auto").preflight()
    with pytest.raises(SystemExit) as refused:
        server(["--model", str(TINY_MODEL), "--port", "1", "--device", "cuda"])
    assert str(refused.value) == "--device cuda: torch sees no CUDA GPU here (use --device cpu or auto)"
    srv = server(["--model", str(TINY_MODEL), "--port", "1"])
    assert next(srv.config.app.state.batcher.model.parameters()).device.type == "cpu"
    srv.config.app.state.batcher.close()


@pytest.fixture(scope="module")
def bos_chat_model(chat_model, tmp_path_factory):
    """The chat model with a tokenizer that puts BOS in front of what it tokenizes unless told not to, as Llama's
    does (a ``TemplateProcessing`` post-processor in its ``tokenizer.json``)."""
    path = tmp_path_factory.mktemp("bos-chat") / "tiny-chat"
    shutil.copytree(chat_model, path)
    spec = json.loads((path / "tokenizer.json").read_text())
    bos = next(t for t in spec["added_tokens"] if t["content"] == "<s>")
    spec["post_processor"]["single"].insert(0, {"SpecialToken": {"id": "<s>", "type_id": 0}})
    spec["post_processor"]["special_tokens"] = {"<s>": {"id": "<s>", "ids": [bos["id"]], "tokens": ["<s>"]}}
    (path / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = load_tokenizer(str(path))
    assert tokenizer("the").input_ids == [bos["id"], *tokenizer("the", add_special_tokens=False).input_ids]
    return path


def test_a_chat_template_model_is_prompted_without_an_added_bos(bos_chat_model, tiny, capsys):
    """Its tokenizer would add BOS, its template puts BOS in itself: the prompt is tokenized as the template
    rendered it, no BOS added (a completion's prompt has none; a chat's has one, not two)."""
    prompt = "the"
    expected = greedy_by_hand(*tiny, prompt, 6, bos=False)
    assert expected != greedy_by_hand(*tiny, prompt, 6)  # an added BOS would change the answer
    chat_model = bos_chat_model
    with TestClient(create_app(str(chat_model), "chat", "chat_template")) as c:
        answer = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6}).json()
        tokens = len(tiny[1](prompt, add_special_tokens=False).input_ids)
        assert answer["choices"][0]["text"] == expected and answer["usage"]["prompt_tokens"] == tokens
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "the"}],
                                                    "max_tokens": 6}).json()  # the template puts BOS in
        with_bos = greedy_by_hand(*tiny, tiny[1].bos_token + "the", 6, bos=False)
        assert chat["choices"][0]["message"]["content"] == with_bos != ""
        assert chat["usage"]["prompt_tokens"] == tokens + 1  # one BOS, the template's
    srv = server(["--model", str(chat_model), "--port", "1", "--host", "localhost", "--prompt-style",
                  "chat_template"])
    assert (srv.config.host, srv.config.port) == ("localhost", 1)
    with TestClient(srv.config.app) as c:
        assert c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6}).json()["choices"][0]["text"] == \
            expected
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "The built-in OpenAI-compatible server for a transformers causal LM." in capsys.readouterr().out


def test_a_prompt_is_refused_by_its_characters_only_when_no_tokenization_can_fit_it(chat_model):
    """A prompt of exactly ``room`` times the longest token's characters may still be ``room`` tokens (the longest
    token repeated): it is tokenized and served; one character more is refused unread. An empty prompt (a chat
    template's model takes the prompt as it is) is refused, not decoded from nothing."""
    from tasks.servers.relay import longest_token_chars

    tokenizer = load_tokenizer(str(chat_model))
    chars = longest_token_chars(tokenizer)
    longest = next(t for t in tokenizer.get_vocab() if len(tokenizer.convert_tokens_to_string([t])) == chars)
    room, context = 4, 256
    prompt = tokenizer.convert_tokens_to_string([longest]) * room
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == room and len(prompt) == room * chars
    with TestClient(create_app(str(chat_model), "chat", "chat_template")) as c:
        def ask(text: str) -> httpx.Response:
            return c.post("/v1/completions", json={"prompt": text, "max_tokens": context - room})

        fits = ask(prompt)
        assert fits.status_code == 200 and fits.json()["usage"]["prompt_tokens"] == room, fits.text
        over = ask(prompt + "x").json()["error"]
        assert (over["message"], over["param"]) == (
            f"prompt is over {room} tokens, the model's context of {context} less max_tokens {context - room}",
            "prompt")
        empty = ask("")
        assert empty.status_code == 400 and (empty.json()["error"]["message"], empty.json()["error"]["param"]) == \
            ("prompt is empty", "prompt")


def test_the_server_command_line_runs_the_app_on_its_host_and_port(capfd):
    from tests.support.asgi import running

    port = net.free_port()
    srv = server(["--model", str(TINY_MODEL), "--port", str(port), "--name", "threaded"])
    assert (srv.config.host, srv.config.port, srv.config.log_level) == ("127.0.0.1", port, "info")
    with running(srv):
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok", "model": "threaded"}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "the", "max_tokens": 3})
        assert answer.json()["choices"][0]["text"]
    assert "Uvicorn running on http://127.0.0.1" in capfd.readouterr().err  # the log level lets it say so
    with pytest.raises(SystemExit):
        parse_args(["--port", "1"])  # no model
    with pytest.raises(SystemExit):
        parse_args(["--model", "m"])  # no port


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    model = models["data"][0]
    assert (model["id"], model["object"], model["owned_by"]) == ("tiny", "model", "fineflow")
    assert abs(model["created"] - time.time()) < 3600


def test_completions_equal_in_process_greedy_generation(client, tiny):
    prompts = [inference.render_prompt("alpaca", {"instruction": INSTRUCTION, "input": w}) for w in ("abc", "saw")]
    expected = [greedy_by_hand(*tiny, p, 8) for p in prompts]
    assert all(e.strip() for e in expected), "the check needs answers that are not empty"
    one = client.post("/v1/completions", json={"prompt": prompts[0], "max_tokens": 8}).json()
    assert (one["object"], one["model"], one["id"][:5]) == ("text_completion", "tiny", "cmpl-")
    assert one["choices"] == [{"index": 0, "text": expected[0], "finish_reason": "stop"}]  # EOS within 8 tokens
    n_prompt = len(tiny[1](tiny[1].bos_token + prompts[0], add_special_tokens=False).input_ids)
    n_answer = len(tiny[1](expected[0], add_special_tokens=False).input_ids)
    assert one["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": n_answer,
                            "total_tokens": n_prompt + n_answer}
    assert RelayServer.extract_result(client.post("/v1/completions", json={"prompt": prompts[0], "max_tokens": 8}),
                                      prompts[0]) == expected[0]
    many = client.post("/v1/completions", json={"prompt": prompts, "max_tokens": 8}).json()
    assert [(c["index"], c["text"]) for c in many["choices"]] == list(enumerate(expected))
    # The budget is honoured ("the" makes the tiny model write on); the default is 32 tokens.
    short = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 3}).json()
    assert (short["choices"][0]["finish_reason"], short["usage"]["completion_tokens"]) == ("length", 3)
    assert short["choices"][0]["text"] == greedy_by_hand(*tiny, "the", 3) != greedy_by_hand(*tiny, "the", 32)
    default = client.post("/v1/completions", json={"prompt": "the"}).json()
    assert default["choices"][0]["text"] == greedy_by_hand(*tiny, "the", 32) != greedy_by_hand(*tiny, "the", 33)


def test_max_tokens_out_of_range_is_refused(client):
    for max_tokens in (0, 513, -1):
        bad = client.post("/v1/completions", json={"prompt": "x", "max_tokens": max_tokens})
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "max_tokens must be between 1 and 512"
        assert bad.json()["error"]["param"] == "max_tokens"
    for max_tokens in (1, 254):  # the bound itself is allowed, as is all the context the prompt leaves
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": max_tokens}).status_code == 200
    over = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 255})  # BOS + x + 255 > 256
    assert over.status_code == 400 and over.json()["error"]["message"] == \
        "prompt is 2 tokens; with max_tokens 255 it is over the model's context of 256"


def test_chat_renders_system_and_last_user_message_and_answers_as_in_process(client, tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": f"{INSTRUCTION}\nsaw"}]
    prompt = inference.render_prompt("alpaca", {"messages": messages})
    assert prompt.count("Be brief.") == 1 and "hello" not in prompt and "saw" in prompt
    expected = greedy_by_hand(*tiny, prompt, 8)
    chat = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8}).json()
    assert (chat["object"], chat["model"], chat["id"][:9]) == ("chat.completion", "tiny", "chatcmpl-")
    assert chat["choices"] == [{"index": 0, "message": {"role": "assistant", "content": expected},
                                "finish_reason": "stop"}]
    assert expected.strip()
    default = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "the"}]}).json()
    user_only = inference.render_prompt("alpaca", {"messages": [{"role": "user", "content": "the"}]})
    assert default["choices"][0]["message"]["content"] == greedy_by_hand(*tiny, user_only, 32)


def test_chat_without_a_user_message_is_refused(client):
    for messages in ([], [{"role": "system", "content": "Be brief."}], [{"role": "assistant", "content": "hi"}]):
        resp = client.post("/v1/chat/completions", json={"messages": messages})
        assert resp.status_code == 400 and resp.json()["error"]["message"] == "messages must contain a user message"


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
    port = net.free_port()
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


def test_a_server_whose_chosen_port_was_taken_starts_on_another(fineflow_home, monkeypatch):
    """Another process takes the free port chosen for a server before the server binds it: the start goes on with
    another port (a port the pipeline's config names would fail, naming it)."""
    import socket

    from tasks.serving.start import start_engine

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    first = iter([taken])
    real = net.free_port
    monkeypatch.setattr(net, "free_port", lambda twin_offset=0: next(first, None) or real(twin_offset))
    said: list[str] = []
    relaunch = {"deploy": {"backend": "relay"}, "prompt_style": "alpaca"}
    try:
        started = start_engine(RelayServer(name="tiny"), str(TINY_MODEL), "port-race", api_key=False,
                               relaunch=relaunch, log=said.append)
        assert said == [f"port {taken} was taken before port-race could listen on it: starting it on another"]
        assert started.endpoint.url != f"http://127.0.0.1:{taken}"
        assert httpx.get(f"{started.endpoint.url}/health", timeout=10).status_code == 200
    finally:
        endpoints.stop("port-race")
        squatter.close()


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "lora"], "--adapter 'lora': expected NAME=PATH, each NAME once"),
    (["--adapter", "=/a"], "--adapter '=/a': expected NAME=PATH, each NAME once"),
    (["--adapter", "a="], "--adapter 'a=': expected NAME=PATH, each NAME once"),
    (["--max-adapters", "2", "--base-revision", "r", "--adapter", "a=/x", "--adapter", "a=/y"],
     "--adapter 'a=/y': expected NAME=PATH, each NAME once"),
    (["--adapter", "a=/x"], "--adapter needs --max-adapters N (how many adapters may stay in memory)"),
    (["--max-adapters", "2"], "--max-adapters needs --base-revision (the model's revision, which adapters must match)"),
    (["--max-adapters", "2", "--base-revision", "r", "--adapter", "a=/x", "--adapter-root", "/srv/adapters"],
     "--adapter: adapter 'a': /x is outside the folders adapters are loaded from (/srv/adapters; the server's "
     "--adapter-root)"),
])
def test_the_command_line_refuses_adapters_it_cannot_serve_saying_why(argv, message):
    with pytest.raises(SystemExit) as refused:
        server(["--model", str(TINY_MODEL), "--port", "1", *argv])
    assert str(refused.value) == message


def test_the_command_lines_limits_reach_the_server(capsys, monkeypatch):
    """What the deploy step passes on the command line is what the server enforces: the name it serves under, the
    largest max_tokens and body, the batch size and wait."""
    monkeypatch.delenv("FINEFLOW_API_KEY", raising=False)
    srv = server(["--model", str(TINY_MODEL), "--port", "1", "--name", "limited", "--max-tokens", "7",
                  "--max-body-bytes", "3000", "--max-batch", "3", "--batch-wait-ms", "9"])
    assert capsys.readouterr().out == ("fineflow relay: limited on 127.0.0.1:1 (cpu), API key OFF (loopback only), "
                                       "batches of up to 3\n")
    batcher = srv.config.app.state.batcher
    assert (batcher.max_batch, batcher.wait_s) == (3, 0.009) and batcher.adapters is None
    with TestClient(srv.config.app) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["limited"]
        assert c.post("/v1/completions", json={"prompt": "the", "max_tokens": 7}).status_code == 200
        over = c.post("/v1/completions", json={"prompt": "the", "max_tokens": 8})
        assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens", over.text
        assert c.post("/v1/completions", json={"prompt": "x" * 3000, "max_tokens": 1}).status_code == 413


def test_adapters_and_the_key_given_on_the_command_line_reach_the_server(tmp_path, capsys, monkeypatch):
    """``--adapter`` (its path may hold ``=``), ``--max-adapters``, ``--base-revision``, ``--adapter-root`` and
    ``--adapter-state`` reach the server as given, and with ``FINEFLOW_API_KEY`` every ``/v1`` route wants it."""
    from tasks.models.local import revision_of
    from tests.support.lora import random_adapter

    revision = revision_of(TINY_MODEL)
    root, elsewhere, state = tmp_path / "root", tmp_path / "elsewhere", tmp_path / "state.json"
    shop = root / "shop=v1"
    for folder in (shop, elsewhere):
        folder.mkdir(parents=True)
        random_adapter(folder, 1, {"base_model_revision": revision}, str(TINY_MODEL))
    monkeypatch.setenv("FINEFLOW_API_KEY", "k-command-line")
    key = {"Authorization": "Bearer k-command-line"}
    srv = server(["--model", str(TINY_MODEL), "--port", "1", "--name", "base", "--max-adapters", "1",
                  "--base-revision", revision, "--adapter", f"shop={shop}", "--adapter-root", str(root),
                  "--adapter-state", str(state)])
    assert capsys.readouterr().out == ("fineflow relay: base on 127.0.0.1:1 (cpu), API key required, batches of up "
                                       "to 16\n")
    assert srv.config.app.state.batcher.adapters.max_resident == 1
    assert json.loads(state.read_text()) == {"shop": str(shop.resolve())}
    with TestClient(srv.config.app) as c:
        assert c.get("/v1/models").status_code == 401
        assert [(m["id"], m.get("root")) for m in c.get("/v1/models", headers=key).json()["data"]] == \
            [("base", None), ("shop", str(shop.resolve()))]
        refused = c.post("/v1/load_lora_adapter", headers=key, json={"lora_name": "other", "lora_path": str(elsewhere)})
        assert refused.status_code == 403 and f"({root}; the server's --adapter-root)" in refused.text, refused.text


def test_auto_decodes_on_a_gpu_where_torch_sees_one(monkeypatch, capsys):
    """``--device auto`` asks for CUDA where torch sees a GPU, and ``--device cpu`` never does. This machine has no
    GPU: torch is told it has one, and the model is loaded on the CPU whatever device is asked for."""
    import torch

    from tasks import inference

    asked: list[str] = []
    real = inference.load_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(inference, "load_model", lambda path, device="cpu": asked.append(device) or real(path))
    monkeypatch.delenv("FINEFLOW_API_KEY", raising=False)
    for device in ("auto", "cpu", "cuda"):
        srv = server(["--model", str(TINY_MODEL), "--port", "1", "--device", device])
        srv.config.app.state.batcher.close()
    assert asked == ["cuda", "cpu", "cuda"]
    assert [line.split(" (")[1].split(")")[0] for line in capsys.readouterr().out.splitlines()] == \
        ["cuda", "cpu", "cuda"]


def test_the_help_describes_each_option(capsys, monkeypatch):
    """What ``--help`` says of each option (its name, metavar and help text), on a terminal wide enough that
    argparse wraps nothing."""
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    options: dict[str, str] = {}
    for line in capsys.readouterr().out.split("options:\n")[1].splitlines():
        if line.startswith("  -"):
            usage, _, text = line.strip().partition("  ")
            options[usage] = text.strip()
        elif line.strip():
            options[usage] = line.strip()
    assert options == {
        "-h, --help": "show this help message and exit", "--model MODEL": "", "--port PORT": "",
        "--host HOST": "", "--name NAME": "", "--prompt-style PROMPT_STYLE": "",
        "--max-tokens MAX_TOKENS": "the largest max_tokens a request may ask for",
        "--max-body-bytes MAX_BODY_BYTES": "", "--max-batch MAX_BATCH": "requests decoded together at most",
        "--batch-wait-ms BATCH_WAIT_MS": "how long a batch waits for company",
        "--threads THREADS": "torch's threads for decoding",
        "--device {auto,cpu,cuda}": "where the model decodes (auto: the first CUDA GPU when there is one)",
        "--max-adapters MAX_ADAPTERS": "LoRA adapters kept in memory at most (0: the server serves no adapters)",
        "--adapter NAME=PATH": "an adapter to load at start (with --max-adapters)",
        "--adapter-root ADAPTER_ROOT": "a folder adapters may be loaded from (default: $FINEFLOW_HOME)",
        "--adapter-state ADAPTER_STATE": "with --max-adapters: a file the server keeps its adapters in, so that a "
                                         "restart by its supervisor brings them back",
        "--base-revision BASE_REVISION": "with --max-adapters: the model's revision, which an adapter's recorded "
                                         "base revision must equal"}


def test_the_apps_own_defaults_are_the_command_lines():
    """``create_app`` called without the limits (as tests and the Ray replica's engine do) holds the command line's
    defaults: batches of 16 gathered within 5 ms, a body of 1,000,000 bytes at most."""
    app = create_app(str(TINY_MODEL), "tiny")
    assert (app.state.batcher.max_batch, app.state.batcher.wait_s, app.state.batcher.adapters) == (16, 0.005, None)
    with TestClient(app) as c:
        def sized(n: int) -> int:
            head = '{"max_tokens": 1, "prompt": "'
            return c.post("/v1/completions", content=head + "x" * (n - len(head) - 2) + '"}',
                          headers={"content-type": "application/json"}).status_code
        assert (sized(1_000_000), sized(1_000_001)) == (400, 413)  # the first is only too many tokens
