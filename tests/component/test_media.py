"""The media engines without the stack: the engines whose weights cannot be had here are refused at once naming
the model (in the engine's command and in the server itself), the server goes on to its library where weights are
there, TTSDeploy picks classes as the reference package does, and files travel as the contract's encoded queries.
The engines that run here are served for real, through the deploy flows, in tests/e2e/test_media_pipeline.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tasks import envs
from tasks.deploy import (ENGINES, BarkDeploy, ChatTTSDeploy, EngineUnavailableError, FastapiApp, MusicGenDeploy,
                          OCRDeploy, PiperDeploy, SenseVoiceDeploy, StableDiffusionDeploy, TTSDeploy, WhisperDeploy)
from tasks.deploy.media import bundled_path, word_error_rate
from tasks.formatter import decode_query_with_filepaths, encode_query_with_filepaths
from tasks.servers.media.files import MediaInputError, input_files, materialize, to_data_url
from tests.support.paths import REPO

WEIGHTLESS = [(ChatTTSDeploy, "ChatTTS", "chattts", "ChatTTS weights"), (BarkDeploy, "bark", "bark", "Bark weights"),
              (MusicGenDeploy, "musicgen-small", "musicgen", "MusicGen weights"),
              (SenseVoiceDeploy, "SenseVoiceSmall", "sensevoice", "SenseVoiceSmall weights"),
              (StableDiffusionDeploy, "stable-diffusion-3-medium", "stable_diffusion", "Stable Diffusion 3 weights")]


@pytest.mark.parametrize("cls,model,engine,named", WEIGHTLESS, ids=[w[2] for w in WEIGHTLESS])
def test_an_engine_without_weights_is_refused_at_once_naming_the_model(cls, model, engine, named, tmp_path):
    with pytest.raises(EngineUnavailableError, match=rf"{cls.__name__} cannot start: missing model: .*{model}.*"
                                                     rf"{named}"):
        cls(port=31999).cmd(base_model=model)
    empty = tmp_path / model
    empty.mkdir()
    with pytest.raises(EngineUnavailableError, match=rf"model folder {empty} lacks .*; {named}"):
        cls().cmd(finetuned_model=str(tmp_path / "nothing"), base_model=str(empty))
    # The server itself refuses too, before it listens: started by hand without weights it exits at once.
    proc = subprocess.run([envs.bin_path("media", "python"), "-m", "tasks.servers.media.app", "--engine", engine,
                           "--model", str(empty), "--port", "31999"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3 and f"missing model: {engine}: model folder {empty} lacks" in proc.stderr
    assert named in proc.stderr


def test_with_weights_in_place_the_server_goes_on_to_load_them(tmp_path, monkeypatch):
    """Past the weights check the server imports its library: the media environment has none of these (their
    weights are not obtainable here), so it stops there, saying which library and environment."""
    folder = tmp_path / "bark"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bark"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    assert BarkDeploy().cmd(base_model=str(folder)).argvs[-1][5:7] == ["--model", str(folder)]
    # By name, under the model search roots, as the other engines find models.
    monkeypatch.setenv("LAZYLLM_MODEL_PATH", str(tmp_path))
    assert BarkDeploy().cmd(base_model="bark").argvs[-1][5:7] == ["--model", str(folder)]
    proc = subprocess.run([envs.bin_path("media", "python"), "-m", "tasks.servers.media.app", "--engine", "bark",
                           "--model", str(folder), "--port", "31998"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"loading bark (text -> speech) from {folder}" in proc.stdout
    assert "bark cannot load: No module named 'transformers'" in proc.stderr and "media-py" in proc.stderr


def test_the_engines_that_run_here_find_their_bundled_weights():
    for cls, name, file in ((OCRDeploy, "pp-ocrv6-small", "PP-OCRv6_det_small.onnx"),
                            (PiperDeploy, "en_US-joe-medium", "en_US-joe-medium.onnx"),
                            (WhisperDeploy, "whisper-tiny.en", "model.bin")):
        argv = cls(port=31997).cmd(base_model=name).argvs[-1]
        assert argv[:5] == [envs.bin_path("media", "python"), "-m", "tasks.servers.media.app", "--engine", cls.media_engine]
        assert argv[6] == str(bundled_path(name)) and (bundled_path(name) / file).is_file()
        assert argv[7:11] == ["--host", "127.0.0.1", "--port", "31997"]
        assert ENGINES[cls.engine] is cls
    # A finetuned folder without weights falls back to the base model, as the contract says.
    assert OCRDeploy().cmd("/nonexistent", "pp-ocrv6-small").argvs[-1][6] == str(bundled_path("pp-ocrv6-small"))


def test_tts_deploy_picks_the_class_by_model_name_as_the_reference_does(oracle_python):
    names = ["bark", "Bark", "musicgen-small", "musicgen-medium", "ChatTTS", "chattts-new", "unknown-voice"]
    script = ("import json, sys\nfrom lazyllm.components import TTSDeploy\nout = {}\n"
              "for n in json.loads(sys.argv[1]):\n"
              "    try:\n        out[n] = TTSDeploy.get_deploy_cls(n).__name__\n"
              "    except Exception as e:\n        out[n] = 'error: ' + str(e)\n"
              "print(json.dumps(out))")
    theirs = json.loads(subprocess.run([oracle_python, "-c", script, json.dumps(names)], capture_output=True,
                                       text=True, check=True, timeout=300).stdout.strip().splitlines()[-1])
    ours = {}
    for n in names:
        try:
            ours[n] = TTSDeploy.get_deploy_cls(n).__name__
        except RuntimeError as e:
            ours[n] = f"error: {e}"
    assert ours == theirs
    assert theirs["musicgen-small"] == "MusicGenDeploy" and theirs["ChatTTS"].startswith("error: ChatTTS is deprecated")
    # Beyond the reference: piper voices, the TTS engine that runs here.
    assert type(TTSDeploy("en_US-joe-medium", port=1)) is PiperDeploy
    assert TTSDeploy.get_deploy_cls("piper-en_US-lessac") is PiperDeploy


def test_the_media_classes_carry_the_contracts_attributes(oracle_python):
    script = ("import json\nfrom lazyllm.components import OCRDeploy\n"
              "print(json.dumps([OCRDeploy.keys_name_handle, OCRDeploy.message_format, OCRDeploy.default_headers]))")
    theirs = json.loads(subprocess.run([oracle_python, "-c", script], capture_output=True, text=True, check=True,
                                       timeout=300).stdout.strip().splitlines()[-1])
    assert theirs == [OCRDeploy.keys_name_handle, OCRDeploy.message_format, OCRDeploy.default_headers]
    for cls in (OCRDeploy, PiperDeploy, WhisperDeploy, ChatTTSDeploy, StableDiffusionDeploy):
        engine = cls(log_path="/tmp/x", trust_remote_code=False, port=8080)
        assert (engine.port, engine.log_path, engine.trust_remote_code) == (8080, "/tmp/x", False)
    argv = OCRDeploy(log_path="/tmp/x", trust_remote_code=False).cmd(base_model="pp-ocrv6-small").argvs[-1]
    assert argv[-2:] == ["--log-dir", "/tmp/x"] and "--trust-remote-code" not in argv
    assert OCRDeploy().cmd(base_model="pp-ocrv6-small").argvs[-1][-1] == "--trust-remote-code"  # the default
    assert ChatTTSDeploy.message_format["refinetext"]["max_new_token"] == 384
    assert ChatTTSDeploy.message_format["infercode"]["repetition_penalty"] == 1.05


def test_files_travel_as_encoded_queries(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_TEMP_DIR", str(tmp_path / "temp"))
    wav = b"RIFF" + b"\0" * 40
    answer = encode_query_with_filepaths(files=[to_data_url(wav, "audio/wav")])
    local = decode_query_with_filepaths(materialize(answer, "piper"))
    (path,) = local["files"]
    assert local["query"] == "" and Path(path).read_bytes() == wav
    assert Path(path).parent == tmp_path / "temp" / "piper" and Path(path).name.startswith("sound_")
    # Inputs: a path, a data URL, an encoded query, a list; a missing file or broken base64 is named.
    img = tmp_path / "a.png"
    img.write_bytes(b"png")
    assert input_files({"inputs": str(img)}) == [img]
    assert input_files(encode_query_with_filepaths("read it", [str(img)])) == [img]
    # Uploads older than a day are removed when the next is written; a younger one stays.
    inputs = tmp_path / "temp" / "inputs"
    inputs.mkdir(parents=True)
    old, young = inputs / "upload_old.png", inputs / "upload_young.png"
    for f, age_s in ((old, 24 * 3600 + 60), (young, 24 * 3600 - 60)):
        f.write_bytes(b"png")
        os.utime(f, (time.time() - age_s, time.time() - age_s))
    (written,) = input_files({"inputs": [to_data_url(b"png", "image/png")]})
    assert (written.read_bytes(), written.suffix, written.parent) == (b"png", ".png", inputs)
    assert (written.stat().st_mode & 0o777, written.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert sorted(inputs.iterdir()) == sorted([young, written])
    # A path outside the temp dir and the data roots is refused as a missing one is: nothing tells them apart.
    (tmp_path / "link.png").symlink_to(REPO / "README.md")
    for outside in ("/nope.png", str(REPO / "README.md"), str(REPO / "nope.md"), str(tmp_path / "link.png")):
        with pytest.raises(MediaInputError) as refused:
            input_files(outside)
        assert str(refused.value).startswith(f"no such file among those this server reads: {outside} (it reads "
                                             f"files under {tmp_path / 'temp'}, ")
    with pytest.raises(MediaInputError, match=r"does not decode"):
        input_files("data:image/png;base64,%%%")


def test_word_error_rate():
    assert word_error_rate("The quick brown fox.", "the quick brown fox") == 0
    assert word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert word_error_rate("a b", "a b c d") == 1.0


def test_a_server_without_an_api_key_binds_only_loopback():
    proc = subprocess.run([envs.bin_path("media", "python"), "-m", "tasks.servers.media.app", "--engine", "ocr", "--model",
                           str(bundled_path("pp-ocrv6-small")), "--host", "0.0.0.0", "--port", "31996"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and "refusing to serve on 0.0.0.0 without an API key" in proc.stderr



class Base:  # at module level: FastapiApp finds a method's class by its qualified name, as the reference does
    @FastapiApp.get("/who")
    def who(self):
        return {"who": "base"}

    @FastapiApp.post("/echo")
    def echo(self, body: dict):
        return body


class Child(Base):
    @FastapiApp.get("/who")
    def who(self):
        return {"who": "child"}


def test_fastapi_app_gives_a_served_object_routes_of_its_own(oracle_python):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    FastapiApp.update()
    # Filed under the defining class as the reference files them: {(method, path): [name, kwargs]}.
    assert Base.__dict__["__relay_services__"] == {("get", "/who"): ["who", {}], ("post", "/echo"): ["echo", {}]}
    assert Child.__dict__["__relay_services__"] == {("get", "/who"): ["who", {}]}
    app = FastAPI()
    FastapiApp.mount(app, Child())
    client = TestClient(app)
    assert client.get("/who").json() == {"who": "child"}
    assert client.post("/echo", json={"a": 1}).json() == {"a": 1}
    script = ("import json\nfrom lazyllm.components.deploy.relay.base import FastapiApp\n"
              "class B:\n    @FastapiApp.get('/who')\n    def who(self): pass\n"
              "    @FastapiApp.post('/echo')\n    def echo(self): pass\n"
              "FastapiApp.update()\n"
              "print(json.dumps(sorted([list(k), v] for k, v in B.__relay_services__.items())))")
    theirs = subprocess.run([oracle_python, "-c", script], capture_output=True, text=True, check=True,
                            timeout=300).stdout.strip().splitlines()[-1]
    assert json.loads(theirs) == sorted([list(k), v] for k, v in Base.__dict__["__relay_services__"].items())


def test_the_contracts_sense_voice_class(tmp_path):
    import pickle

    from tasks.servers.media.base import MissingModelError
    from tasks.servers.media.hub_engines import SenseVoice

    with pytest.raises(MissingModelError, match=r"sensevoice: model folder .* lacks model.pt, config.yaml; "
                                                r"SenseVoiceSmall weights"):
        SenseVoice(str(tmp_path))
    (tmp_path / "model.pt").write_bytes(b"\0")
    (tmp_path / "config.yaml").write_text("model: SenseVoiceSmall\n")
    lazy = SenseVoice(str(tmp_path))  # loads on first use, not before
    assert (lazy.base_path, lazy.init_flag, lazy.model) == (str(tmp_path), False, None)
    again = pickle.loads(pickle.dumps(lazy))
    assert type(again) is SenseVoice and again.base_path == str(tmp_path) and not again.init_flag
    with pytest.raises(ImportError, match="funasr"):  # FunASR is not installed here: loading stops there
        SenseVoice.rebuild(str(tmp_path), init=True)


def test_a_server_logs_its_requests_where_log_path_says(tmp_path):
    import httpx

    from tasks.deploy.media import render_text

    engine = OCRDeploy(log_path=str(tmp_path / "logs"))
    command = engine.cmd(base_model="pp-ocrv6-small")
    proc = subprocess.Popen(command.argvs[-1], env={**os.environ, **command.env}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not command.checker():
            assert proc.poll() is None and time.monotonic() < deadline, "the OCR server did not start"
            time.sleep(0.3)
        page = tmp_path / "p.png"
        page.write_bytes(render_text("logged line"))
        assert engine.request(command.return_value, str(page)) == "logged line"
        assert httpx.post(f"{command.return_value}/generate", json={"inputs": "/nope.png"}).status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ok, bad = (tmp_path / "logs" / f"ocr-{engine.port}.log").read_text().splitlines()
    assert " INFO POST /generate 200 " in ok and ok.endswith(", 11 characters out")
    assert " INFO POST /generate 400 no such file among those this server reads: /nope.png (" in bad
