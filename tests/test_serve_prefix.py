"""The server's prefix-state cache: exact (cache on == cache off, for every seed and prompt, extensions included),
isolated (a stream starts from a kept state only when its prompt begins with exactly that prompt), bounded (LRU,
``--prefix-cache-mb``), counted in /metrics and in the memory check."""
import re

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from conftest import TEXT  # noqa: E402
from serving import KEY, MODEL, ServerThread, expected, run_engine  # noqa: E402

from textstream.cli import main  # noqa: E402
from textstream.errors import TextstreamError  # noqa: E402
from textstream.serve.engine import FEED_CHUNK, Engine  # noqa: E402
from textstream.serve.limits import check_memory  # noqa: E402
from textstream.serve.prefix import PrefixCache, entry_bytes  # noqa: E402
from textstream.serve.stream import StreamSpec  # noqa: E402

BASE = (TEXT * 12)[:600]  # longer than FEED_CHUNK: cached
PROMPTS = [  # a prompt, then prompts that equal it, extend it, fall short of it or differ from it at the end
    BASE,
    BASE,
    BASE + "it was the age",  # extends BASE: only the 14 new characters are fed
    BASE + "it was the age" + TEXT[:300],  # extends both kept prompts: the longer one is the start
    BASE[:-1],  # a prefix of BASE (BASE's state is not its state)
    BASE[:-1] + ("a" if BASE[-1] != "a" else "b"),  # as long as BASE, the last character differs
    TEXT[:FEED_CHUNK],  # short: neither looked up nor kept
]


def _engine(gen, mb: float, hits: list | None = None) -> Engine:
    cache = PrefixCache(int(mb * (1 << 20)), layers=gen.backend.layers, units=gen.backend.units)
    return Engine(gen.backend, gen.vocab, max_streams=8, prefix_cache=cache,
                  on_prefix=hits.append if hits is not None else None).start()


def _specs(gen, seed: int, n: int = 40, **kw) -> list[StreamSpec]:
    return [StreamSpec(prompt=gen.encode(p), seed=seed + i, max_chars=n, **kw) for i, p in enumerate(PROMPTS)]


def test_cache_on_gives_the_text_of_cache_off_for_every_seed_and_prompt(tiny_gen):
    on, off = _engine(tiny_gen, 1), _engine(tiny_gen, 0)
    try:
        assert off.prefix is None
        for seed in range(6):
            for temperature, top_p in ((1.0, None), (0.7, 0.9), (0.0, None)):
                specs = _specs(tiny_gen, 100 * seed, temperature=temperature, top_p=top_p)
                # one at a time (each later prompt meets the states the earlier ones left), then all together
                one_by_one = [run_engine(on, [spec])[0][0] for spec in specs]
                together, _ = run_engine(on, specs)
                without, _ = run_engine(off, specs)
                assert one_by_one == together == without
        want = [expected(tiny_gen, p, 40, seed=i) for i, p in enumerate(PROMPTS)]
        assert run_engine(on, _specs(tiny_gen, 0))[0] == want  # the library's text
        assert on.prefix.hits > 0 and on.prefix.chars > 0
    finally:
        on.close()
        off.close()


def test_a_prompt_starts_from_the_longest_kept_prompt_it_begins_with_and_no_other(tiny_gen):
    hits = []
    engine = _engine(tiny_gen, 1, hits)
    try:
        for spec in _specs(tiny_gen, 0):
            run_engine(engine, [spec])
        longer = len(BASE) + len("it was the age")
        # BASE: a miss, then a hit of all of it; its extensions start from the longest kept prompt; BASE[:-1] is a
        # miss (it is kept then), and the one differing from BASE at the end starts from BASE[:-1], not from BASE;
        # the short prompt is never looked up
        assert hits == [0, len(BASE), len(BASE), longer, 0, len(BASE) - 1]
        assert len(engine.prefix) == 5  # BASE, its two extensions, the two misses; not the short prompt
        assert engine.prefix.lookup(tiny_gen.encode(BASE[:300])) is None  # nothing kept is a prefix of it
    finally:
        engine.close()


def test_a_kept_state_is_a_copy_that_generating_never_changes(tiny_gen):
    engine = _engine(tiny_gen, 1)
    try:
        ids = tiny_gen.encode(BASE)
        first, _ = run_engine(engine, [StreamSpec(prompt=ids, seed=3, max_chars=500)])
        _, h, c = engine.prefix.lookup(ids)
        kept = h.copy(), c.copy()
        again, _ = run_engine(engine, [StreamSpec(prompt=ids, seed=3, max_chars=500)] * 3)
        assert again == first * 3
        _, h, c = engine.prefix.lookup(ids)
        np.testing.assert_array_equal(h, kept[0])
        np.testing.assert_array_equal(c, kept[1])
        # the state is the library's after the same prompt
        s = tiny_gen.session(BASE, seed=3)
        np.testing.assert_allclose(h, s.state["h"], atol=1e-6)
    finally:
        engine.close()


def test_the_cache_is_a_bounded_lru():
    layers, units = 2, 8
    per = entry_bytes(layers, units)
    cache = PrefixCache(3 * per + per // 2, layers=layers, units=units)
    state = [np.full((layers, units), i, np.float32) for i in range(6)]
    prompts = [np.arange(300 + i, dtype=np.int32) + 1000 * i for i in range(5)]
    prompts.append(np.concatenate([prompts[4], [7, 8, 9]]))  # extends prompts[4]
    for i in range(3):
        cache.store(prompts[i], state[i], state[i])
    assert cache.lookup(prompts[0])[0] == 300  # the oldest is now the most recently used
    for i in range(3, 5):
        cache.store(prompts[i], state[i], state[i])
        assert cache.bytes <= cache.max_bytes and len(cache) == 3
    assert cache.lookup(prompts[1]) is None and cache.lookup(prompts[2]) is None  # evicted, least recent first
    length, h, _ = cache.lookup(prompts[0])
    assert length == 300 and (h == 0).all()
    assert cache.lookup(prompts[5])[0] == 304  # prompts[5] extends prompts[4] (arange): its state is the start
    assert (cache.hits, cache.misses, cache.chars) == (3, 2, 904)
    tiny = PrefixCache(per - 1, layers=layers, units=units)  # too small for one entry: keeps nothing
    tiny.store(prompts[0], state[0], state[0])
    assert len(tiny) == 0 and tiny.bytes == 0


def test_served_prompts_are_counted_in_the_metrics(tiny_gen):
    srv = ServerThread(tiny_gen, max_streams=4, api_key=KEY, max_connections=16, prefix_cache_mb=0.5)
    try:
        client = srv.client()
        texts = [client.completions.create(model=MODEL, prompt=p, max_tokens=30, seed=5).choices[0].text
                 for p in (BASE, BASE, BASE + "it")]
        assert texts[0] == texts[1] == expected(tiny_gen, BASE, 30, seed=5)
        assert texts[2] == expected(tiny_gen, BASE + "it", 30, seed=5)
        metrics = srv.metrics()

        def value(name):
            return float(re.search(rf"^{name} (\S+)$", metrics, re.M).group(1))

        assert value("textstream_prompt_cache_chars_total") == 2 * len(BASE)
        assert (value("textstream_prompt_cache_hits_total"), value("textstream_prompt_cache_misses_total")) == (2, 1)
        assert value("textstream_prompt_cache_bytes") == 2 * entry_bytes(tiny_gen.backend.layers,
                                                                         tiny_gen.backend.units)
        assert value("textstream_prompt_chars_total") == len(BASE) + 2  # what was fed: BASE once, then "it"
    finally:
        srv.close()


def test_the_cache_counts_in_the_memory_check_and_a_bad_size_is_one_line(tiny_run, capsys):
    check_memory(4, 1 << 20, 4, 1 << 20, available=1 << 30, fixed=512 << 20)
    with pytest.raises(TextstreamError, match="--prefix-cache-mb 2048 needs 2.0 GiB"):
        check_memory(4, 1 << 20, 4, 1 << 20, available=1 << 30, fixed=2048 << 20)
    with pytest.raises(TextstreamError, match="--max-streams 400 needs"):  # fits alone, not beside the cache
        check_memory(400, 1 << 20, 4, 1 << 20, available=1 << 30, fixed=512 << 20)
    for bad in ("-1", "nan", "inf"):
        assert main(["serve", str(tiny_run), "--prefix-cache-mb", bad]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("textstream: --prefix-cache-mb must be a number >= 0"), err
