"""The deploy-only flows on the real stack: ``deploy/ocr``, ``deploy/tts`` and ``deploy/stt`` through the worker
serve PP-OCR, a piper voice and Whisper for real, register each endpoint as a version (type, engine, smoke
result, files in the bucket) and promote it; then the round trip through the production endpoints, with the API
key: text -> speech -> text within a word-error-rate bound, and a rendered image -> OCR -> the exact text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from infra.demo import follow, start_deployment
from tasks.deploy import OCRDeploy, PiperDeploy, WhisperDeploy
from tasks.deploy.media import bundled_path, render_text, word_error_rate
from tasks.formatter import decode_query_with_filepaths, encode_query_with_filepaths
from tasks.servers.media.files import file_to_data_url, to_data_url
from tasks.services import keys, registry, storage, tracking

SENTENCES = ["Please send the quarterly report to the finance team by Friday.",
             "The weather today is sunny with a light breeze from the west.",
             "Our training pipeline registers every model version it deploys."]
MAX_WER = 0.2
PAGE = "Invoice 4521 paid in full\nShip to 77 Harbor Road\nfineflow reads every line"


@pytest.fixture(scope="module")
def deployed(stack):
    out = {}
    for kind, model, bundled in (("ocr", "fineflow-ocr", "pp-ocrv6-small"), ("tts", "fineflow-tts", "en_US-joe-medium"),
                                 ("stt", "fineflow-stt", "whisper-tiny.en")):
        logs: list[str] = []
        flow_run_id = start_deployment(f"deploy/{kind}")
        state = follow(flow_run_id, timeout_s=600, echo=logs.append)
        assert state.is_completed(), "\n".join(logs)
        version = registry.alias_version(model, "production")
        assert version is not None, "\n".join(logs)
        out[kind] = {"model": model, "version": version, "tags": registry.version_tags(model, version),
                     "url": registry.client().get_registered_model(model).tags["url_production"],
                     "run": tracking.run_for_flow_run(str(flow_run_id)), "bundled": bundled}
    return out


def test_each_deploy_flow_registers_and_promotes_its_endpoint(deployed):
    engines = {"ocr": "ocr", "tts": "piper", "stt": "whisper"}
    for kind, d in deployed.items():
        tags, run = d["tags"], d["run"]
        assert (tags["model_type"], tags["backend"], tags["health"]) == (kind, engines[kind], "ok")
        assert tags["prefect_flow_run_id"] == run.data.tags["prefect_flow_run_id"]
        assert run.info.status == "FINISHED" and run.data.tags["registered_version"] == d["version"]
        # The files the version serves are in the bucket, byte for byte what the endpoint loaded.
        assert storage.verify_upload(bundled_path(d["bundled"]), tags["model_files"]) > 1_000_000
        assert tags["launch_command"].split()[2:5] == ["tasks.servers.media.app", "--engine", engines[kind]]
        assert "FINEFLOW_API_KEY" not in tags["launch_command"] and keys.api_key() not in str(tags)
        # Behind the API key: refused without it, through the alias's router; the engine's own /info route too.
        assert httpx.post(f"{d['url']}/generate", json={"inputs": "x"}, timeout=30).status_code == 401
        assert httpx.get(f"{d['url']}/info", timeout=30).status_code == 401
        info = httpx.get(f"{d['url']}/info", headers=keys.auth_headers(), timeout=30).json()
        assert (info["engine"], info["model"]) == (engines[kind], str(bundled_path(d["bundled"])))
        assert info["files"] == {str(p.relative_to(bundled_path(d["bundled"]))): p.stat().st_size
                                 for p in bundled_path(d["bundled"]).rglob("*") if p.is_file()}
    read = "'fineflow reads 4521 lines'"
    assert deployed["ocr"]["tags"]["smoke_test"] == f"image of {read} -> {read}"
    assert "(WER 0.00" in deployed["stt"]["tags"]["smoke_test"]
    assert "s of audio)" in deployed["tts"]["tags"]["smoke_test"]
    voice = httpx.get(f"{deployed['tts']['url']}/info", headers=keys.auth_headers(), timeout=30).json()
    assert (voice["language"], voice["sample_rate"]) == ("en-us", 22050)


def test_text_to_speech_to_text_round_trip(deployed, tmp_path, monkeypatch):
    monkeypatch.setenv("FINEFLOW_TEMP_DIR", str(tmp_path / "temp"))
    headers = keys.auth_headers()
    tts, stt = PiperDeploy(), WhisperDeploy()
    for sentence in SENTENCES:
        spoken = decode_query_with_filepaths(tts.request(deployed["tts"]["url"], sentence, headers))
        (wav,) = spoken["files"]
        assert Path(wav).parent == tmp_path / "temp" / "piper" and Path(wav).read_bytes()[:4] == b"RIFF"
        # The audio goes back as the contract's encoded query (a path here) and as base64 (what a remote client sends).
        heard = stt.request(deployed["stt"]["url"], encode_query_with_filepaths("", [wav]), headers)
        assert word_error_rate(sentence, heard) <= MAX_WER, (sentence, heard)
        assert stt.request(deployed["stt"]["url"], file_to_data_url(wav), headers) == heard


def test_a_rendered_page_reads_back_exactly(deployed, tmp_path):
    headers, ocr = keys.auth_headers(), OCRDeploy()
    page = tmp_path / "page.png"
    page.write_bytes(render_text(PAGE))
    reply = httpx.post(f"{deployed['ocr']['url']}/generate", json={"ocr_files": [str(page)]}, headers=headers,
                       timeout=60)
    assert reply.status_code == 200 and reply.text == PAGE
    assert ocr.request(deployed["ocr"]["url"], to_data_url(page.read_bytes(), "image/png"), headers) == PAGE
    # A file that is not there is the client's error, named; the endpoint keeps serving.
    reply = httpx.post(f"{deployed['ocr']['url']}/generate", json={"inputs": str(tmp_path / "missing.png")},
                       headers=headers, timeout=30)
    assert reply.status_code == 400 and f"no such file among those this server reads: {tmp_path / 'missing.png'}" \
        in reply.text
    reply = httpx.post(f"{deployed['ocr']['url']}/generate", json={"ocr_files": [str(page)]}, headers=headers,
                       timeout=60)
    assert reply.status_code == 200 and reply.text == PAGE


def test_a_deploy_whose_model_is_missing_fails_at_once_and_production_keeps_serving(deployed):
    """deploy/tts asked to serve Bark (no weights here): the run fails in its first step naming the model; no
    version is registered, and the piper version keeps the alias and answers."""
    model, before = "fineflow-tts", deployed["tts"]["version"]
    versions = len(registry.client().search_model_versions(f"name = '{model}'"))
    logs: list[str] = []
    flow_run_id = start_deployment("deploy/tts", {"overrides": {"model": {"name": "bark"},
                                                                "deploy": {"backend": "bark"}}})
    state = follow(flow_run_id, timeout_s=300, echo=logs.append)
    assert state.is_failed()
    assert "BarkDeploy cannot start: missing model: bark: model folder bark does not exist" in "\n".join(logs)
    assert tracking.run_for_flow_run(str(flow_run_id)).info.status == "FAILED"
    assert len(registry.client().search_model_versions(f"name = '{model}'")) == versions
    assert registry.alias_version(model, "production") == before
    spoken = PiperDeploy().request(deployed["tts"]["url"], "Still here.", keys.auth_headers())
    assert Path(decode_query_with_filepaths(spoken)["files"][0]).is_file()


def test_a_served_version_starts_again_from_the_bucket(deployed, tmp_path):
    """The OCR version's endpoint gone, the registry starts it again from its files in the bucket (what rollback
    and ``make up`` do); the version's recorded URL follows it."""
    from tasks.serving import endpoints, rollout

    d = deployed["ocr"]
    assert endpoints.stop(d["tags"]["endpoint_name"])
    ep = rollout.serving_endpoint(d["model"], d["version"], log=print)
    assert ep.healthy() and registry.version_tags(d["model"], d["version"])["endpoint_url"] == ep.url
    assert Path(ep.model_path).parent.name == "fineflow-ocr"  # FINEFLOW_HOME/models/<model>/<version>
    assert storage.verify_upload(ep.model_path, d["tags"]["model_files"]) > 1_000_000
    page = tmp_path / "again.png"
    page.write_bytes(render_text("Started again from the bucket"))
    assert OCRDeploy().request(ep.url, str(page), keys.auth_headers()) == "Started again from the bucket"
