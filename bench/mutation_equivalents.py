"""Survivors of ``bench/mutation.py`` that no test can tell from the code, each with the reason.

A row is (module, fragments of the mutated lines as mutmut writes them, why); each mutated line is matched
stripped and between newlines, so a fragment that starts and ends with a newline names a whole line. The report
marks every survivor a row matches as equivalent, with its reason; a survivor no row matches is marked **not
explained**: a test to write, or a reason to add here. Fragments name the mutated text, not mutmut's numbers,
which change with the code.
"""

from __future__ import annotations

ROUTER, CACHE, KEYS = "tasks/servers/router.py", "tasks/services/cache.py", "tasks/services/keys.py"
EMBED, MICRO, RETRIEVAL = "tasks/servers/embed.py", "tasks/servers/microbatch.py", "tasks/evaluate/retrieval.py"
BATCHING, RELAY = "tasks/servers/batching.py", "tasks/servers/relay.py"
ROLLOUT = "tasks/serving/rollout.py"

EQUIVALENT: list[tuple[str, tuple[str, ...], str]] = [
    # The router
    (ROUTER, (
        'json.dumps(state, indent=None)',
        'json.dumps(state, )',
        'json.dumps(state, indent=2)',
     ),
     "the state file's indentation: it is read back as JSON"),
    (ROUTER, (
        'httpx.AsyncClient(timeout=None)',
        'httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)',
        'connect=None))',
     ),
     'the upstream timeouts show only with an endpoint that stalls past them (600 s, 5 s to connect)'),
    (ROUTER, (
        'httpx.Timeout(UPSTREAM_TIMEOUT_S, ))',
     ),
     'without a connect timeout httpx uses the read one: only an address that never accepts tells them apart'),
    (ROUTER, (
        'headers.get("AUTHORIZATION"',
        'headers.get("CONTENT-LENGTH")',
     ),
     "Starlette's headers are case-insensitive"),
    (ROUTER, (
        'headers.get("authorization", "XXXX")',
     ),
     "with no header the scheme is 'XXXX' instead of '': refused as not 'Bearer' either way"),
    (ROUTER, (
        'methods = ["get"',
        '"post", "PUT"',
        '"put", "DELETE"',
        '"delete", "PATCH"',
        '"patch", "OPTIONS"',
        '"options", "HEAD"',
        '"OPTIONS", "head"]',
     ),
     "Starlette upper-cases a route's methods"),
    (ROUTER, ('"OPTIONS", "XXHEADXX"]',), 'Starlette adds HEAD to every route that takes GET'),
    (ROUTER, ('timeout_s: float = 121)',), "drain's bound: only a backend that never drains tells 120 s from 121 s"),
    (ROUTER, ('while time.monotonic() <= deadline:',), 'differs only at the one instant the deadline is reached'),
    (ROUTER, (
        'timeout=None).json()["inflight"]',
        ').json()["inflight"].get(target):',
     ),
     "the status poll's timeout shows only with a router that stalls, which drain then waits for"),
    (ROUTER, (
        'ArgumentParser(description=None)',
        'ArgumentParser(description=__doc__.splitlines()[1])',
     ),
     'the first line of --help only'),
    (ROUTER, (
        '\nlimit_concurrency=MAX_CONNECTIONS, http=HeaderDeadline))\n',
     ),
     "uvicorn's own keep-alive default is 5 s, KEEP_ALIVE_S's value"),
    # The work-done cache
    (CACHE, (
        'text=True, timeout=None,',
        'text=True, timeout=21,',
     ),
     "git's timeout: git on a local checkout answers in milliseconds"),
    (CACHE, (
        'capture_output=True, text=True, check=True).stdout',
     ),
     "git's timeout dropped: git on a local checkout answers in milliseconds"),
    (CACHE, (
        'e.response.get("Error", None)',
        'e.response.get("Error", )',
     ),
     "botocore's ClientError always carries an 'Error' entry"),
    (CACHE, (
        '("XX404XX", "NoSuchKey")',
     ),
     "S3 (SeaweedFS, like AWS) names a missing object NoSuchKey; '404' is only the HEAD request's code"),
    # The API key
    (KEYS, ('secrets.token_urlsafe(None)',), "token_urlsafe's default is 32 bytes, the length asked for"),
    # The embedding server
    (EMBED, (
        'LazyFlagEmbedding(None, sparse=sparse',
        'LazyFlagEmbedding(model_path, sparse=None',
        'LazyFlagEmbedding(model_path, init=True)',
     ),
     "FlagEmbedding's model only: killed by test_sparse_embeddings_come_from_flagembedding_in_its_environment, "
     'which the bench cannot run (DESELECT)'),
    (EMBED, (
        'texts, truncation=None, max_length=max_len)',
        'texts, max_length=max_len)',
        'tokenizer(texts, truncation=None, max_length=max_len)',
        'tokenizer(texts, max_length=max_len)',
     ),
     'transformers truncates whenever max_length is given and truncation is not False'),
    (EMBED, (
        '[pairs_with] * len(texts), texts, truncation=True, max_length=None)',
        '[pairs_with] * len(texts), texts, truncation=True, ).input_ids',
     ),
     "a pair truncated at the tokenizer's own limit: the test reranker's (512) is the cross-encoder's too"),
    (EMBED, ('.decode("ASCII")',), 'codec names are case-insensitive'),
    (EMBED, (
        'batches of up to {args.max_batch}", flush=None)',
        'batches of up to {args.max_batch}", )',
        'batches of up to {args.max_batch}", flush=False)',
     ),
     'flush: the line is printed either way'),
    # Retrieval evaluation
    (RETRIEVAL, (
        'batch_size: int = 65)',
        'model.encode(judged.queries, normalize_embeddings=True',
        'model.encode(judged.corpus, normalize_embeddings=True',
        'model.predict(pairs, convert_to_numpy=True)',
     ),
     'the batch size: the same scores, batched differently'),
    (RETRIEVAL, (
        'SentenceTransformer(model_path, device=None)',
        'SentenceTransformer(model_path, )',
        'CrossEncoder(model_path, device=None)',
        'CrossEncoder(model_path, )',
     ),
     'the device: unnamed, sentence-transformers picks the CPU on a machine without a GPU, the one named'),
    (RETRIEVAL, (
        'q = model.encode(judged.queries, batch_size=batch_size, normalize_embeddings=None',
        'q = model.encode(judged.queries, batch_size=batch_size, normalize_embeddings=False',
        'q = model.encode(judged.queries, batch_size=batch_size, convert_to_numpy=True)',
     ),
     "a query's norm scales its whole row of similarities: its ranking is the same"),
    (RETRIEVAL, (
        'q = model.encode(judged.queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=None)',
        'q = model.encode(judged.queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=False)',
     ),
     "the queries as a list of tensors: numpy's @ makes the same array of them"),
    (RETRIEVAL, (
        'normalize_embeddings=True, )',
        'model.predict(pairs, batch_size=batch_size, ))',
     ),
     "convert_to_numpy's default is True"),
    (RETRIEVAL, (
        'model.predict(pairs, batch_size=batch_size, convert_to_numpy=None)',
        'model.predict(pairs, batch_size=batch_size, convert_to_numpy=False)',
     ),
     'scores as tensors instead of floats: sorted the same'),
    (RETRIEVAL, ('judged.relevant, with_recall=None))',), 'None is as false as False'),
    (RETRIEVAL, (
        '{p: 2.0 for p in r["pos"]}',
     ),
     'a positive labelled 2.0 is as relevant as one labelled 1.0 (relevance is a label of at least 0.5)'),
    # The built-in server's batcher
    (BATCHING, ('wait_ms / 1001',), 'a wait shorter by a thousandth: 5 ms against 4.995 ms'),
    (BATCHING, ('self.on_step: Callable[[], None] = lambda: 0',), "on_step's return value is not used"),
    (BATCHING, ('failed: Exception | None = ""',), "'' is as false as None: no batch error"),
    (BATCHING, (
        'self.thread.join(timeout=None)',
     ),
     'close waits for the batch that runs: only a batch stuck for 30 s tells the bound from none'),
    (BATCHING, (
        'self.thread.join(timeout=31)',
     ),
     'close waits for the batch that runs: only a batch stuck for 30 s tells 30 s from 31 s'),
    (BATCHING, ('if req.top_p <= 1:', 'if req.top_p < 2:'),
     'top_p 1 filtered keeps every token whose preceding mass is under 1: only a tail whose float32 sum rounds to 1 '
     '(each under 1e-7) could go, which no bounded test draws'),
    (BATCHING, ('probs = probs * probs.sum()',), 'torch.multinomial draws by weight, normalized or not'),
    (BATCHING, ('if i >= 0), default=-2)',), 'the default is only compared with 0: -2 is as negative as -1'),
    (BATCHING, (
        'if (tokenizer.pad_token_id is not None) and False else',
        'if (tokenizer.pad_token_id is not None) or True else',
        'if tokenizer.pad_token_id is None else',
     ),
     'the attention mask hides padded positions, so the id they hold changes no answer (and load_tokenizer gives '
     'every tokenizer a pad token)'),
    (BATCHING, ('device = None', 'ids.to(None)', 'mask.to(None)', 'nxt[:, None].to(None)',
                'dtype=torch.long, device=None)], dim=1)', 'torch.ones((len(reqs), 1), dtype=torch.long, )], dim=1)'),
     "on a machine without a GPU torch's default device is the model's"),
    (BATCHING, ('mask = torch.zeros((len(reqs), width), dtype=None)', 'mask = torch.zeros((len(reqs), width), )',
                'torch.ones((len(reqs), 1), dtype=None, device=device)', 'torch.ones((len(reqs), 1), device=device)'),
     'a float mask of 0 and 1 masks as the integer one'),
    (BATCHING, ('(mask.cumsum(+1) - 1)',), 'the last dimension of a 2-D mask is dimension 1'),
    (BATCHING, ('nxt = torch.full((len(reqs),), pad, dtype=None)', 'nxt = torch.full((len(reqs),), pad, )'),
     'torch.full infers int64 from an integer fill, the dtype named'),
    (BATCHING, ('use_cache=None,', 'position_ids=positions, **{name: past},'),
     "the model's config has use_cache on: not naming it is the same"),
    (BATCHING, ('active[i] = row.finish("cancelled")',),
     'a cancelled row left active is finished again at each step and adds no token: only the wasted steps differ'),
    (BATCHING, ('\nreturn\n',), 'the loop is the last thing the function does: return and break end it alike'),
    (BATCHING, (
        'if (hasattr(model, "get_base_model")) and False else model',
        'if hasattr(None, "get_base_model") else model',
        'if hasattr(model, "XXget_base_modelXX") else model',
        'if hasattr(model, "GET_BASE_MODEL") else model',
        '("cache" in inspect.signature(base.forward).parameters) and False',
        '("cache" in inspect.signature(base.forward).parameters) or True',
        '"XXcacheXX" in inspect.signature',
        '"CACHE" in inspect.signature',
        '"cache" not in inspect.signature',
        'else "XXpast_key_valuesXX"',
        'else "PAST_KEY_VALUES"',
     ),
     "the installed transformers takes the KV cache as `cache` and still as `past_key_values`: which name is "
     "chosen shows only on a version before 5.24"),
    (BATCHING, ('pad, dtype=None)', 'torch.full((len(reqs), width), pad, )'),
     'torch.full infers int64 from an integer fill, the dtype named'),
    (BATCHING, ('torch.ones((len(reqs), 2), dtype=torch.long, device=device)], dim=1)',),
     "a mask that grows by two columns a step instead of one: the model reads its first columns, one for each "
     "cached position (transformers' padding mask is indexed by the cache's positions), and those are the same"),
    (BATCHING, ('self.adapters.max_resident if self.adapters else 1',),
     'without adapters no row names one, so the limit of adapters a batch may hold is never read'),
    # The built-in server's command line
    (RELAY, ('batches of up to {args.max_batch}", flush=None)', 'batches of up to {args.max_batch}", )',
             'batches of up to {args.max_batch}", flush=False)', 'left out: {why}", flush=None)',
             'left out: {why}", )', 'left out: {why}", flush=False)'),
     "the line is printed either way; flush decides only when a pipe sees it, and the deploy step waits for "
     "/health, not for a line"),
    (RELAY, ('inference.load_model(model_path, None)', 'inference.load_model(model_path, )'),
     "on a machine without a GPU the model loads on the CPU whether `cpu`, None or nothing is named"),
    (RELAY, ('"max_position_embeddings", None) or 2048)', '"max_position_embeddings", ) or 2048)',
             '"max_position_embeddings", 1) or 2048)', '"max_position_embeddings", 0) or 2049)'),
     "every model served here names its context (max_position_embeddings, GPT-2's through its attribute map): the "
     "fallback for a config without one is never read"),
    (RELAY, ('if outbox or "loop" in loop_of:',),
     "an extra wake-up of the event loop with nothing to deliver: events are queued only after a request's run "
     "has recorded the loop, so a queued event always finds it"),
    (RELAY, ('int(env(RESTARTS_ENV) or 1) > 0',),
     'FINEFLOW_SERVER_RESTARTS is declared with the default "0" (tasks.settings): the fallback is never reached'),
    (RELAY, ('for t in tokenizer.get_vocab()) or 2',),
     "the fallback is for a vocabulary whose every token is empty, which no tokenizer has"),
    (RELAY, ('yield i, (value if (kind == "text") or True else None)',),
     'the batcher sends ("done", None): passing the value on for every kind passes None for the end, as the code '
     'does'),
    # The micro-batcher
    (MICRO, (
        'ThreadPoolExecutor(None, thread_name_prefix',
        'ThreadPoolExecutor(thread_name_prefix',
        'ThreadPoolExecutor(2, thread_name_prefix',
     ),
     'the batcher awaits each call before the next: one call at a time, so the pool never starts a second thread'),
    (MICRO, (
        'self.queue: asyncio.Queue | None = ""',
        'self._loop: asyncio.AbstractEventLoop | None = ""',
     ),
     "'' is not the running loop either: the queue is made at first use all the same"),
    (MICRO, ('(left := deadline - loop.time()) >= 0:',), 'differs only at the one instant the deadline is reached'),
    # The rollout
    (ROLLOUT, ('previous, ep, record_previous=None, log=log)',),
     "promote reads record_previous only for its truth: None is as false as False"),
    (ROLLOUT, ('platform.get(tags.get("endpoint_name", None))',),
     "only for a version without an endpoint_name tag (every deploy step writes one): no endpoint is named '' or "
     "'None', so either default finds none"),
    (ROLLOUT, ('urlparse(tags.get("endpoint_url", None)).port', 'urlparse(tags.get("endpoint_url", "XXXX")).port'),
     "only for a version without an endpoint_url tag: urlparse of '', None or 'XXXX' has no port alike"),
]


def reason(module: str, diff: str) -> str | None:
    """Why the survivor with this ``diff`` is equivalent, or None when no row says."""
    mutated = "".join(f"\n{line[1:].strip()}\n" for line in diff.splitlines() if line.startswith("+") and
                      not line.startswith("+++"))
    return next((why for m, fragments, why in EQUIVALENT if m == module and any(f in mutated for f in fragments)),
                None)
