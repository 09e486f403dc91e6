"""The loader over many shards: windows, order, resume across shard boundaries, hosts, epochs, mixtures."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from data_corpus import data_cfg, write_corpus

from research.data import TokenLoader, epochs_needed, prepare, train_loader, val_batch_sources, val_batches
from research.data.mixture import BLOCK
from research.errors import ConfigError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def ds(corpus_dir, tmp_path_factory):
    return prepare(data_cfg([corpus_dir], tmp_path_factory.mktemp("cache")), verbose=False)  # 48 shards


@pytest.fixture(scope="module")
def mix(corpus_dir, tmp_path_factory):
    sources = [{"source": str(corpus_dir / "part0"), "weight": 3}, {"source": str(corpus_dir / "part1"), "weight": 1}]
    return prepare(data_cfg(sources, tmp_path_factory.mktemp("mixcache")), verbose=False)


def take(it, k):
    return [next(it) for _ in range(k)]


def test_windows_read_across_shard_boundaries(ds):
    assert len(ds.manifest["units"]) == 48
    it = train_loader(ds, seq_len=32, global_batch=64, seed=0)
    flat = np.asarray(ds.train_tokens())
    for step in range(3):
        batch = next(it)
        assert batch.shape == (64, 33) and batch.dtype == np.int32
        for row, w in zip(batch, it.window_indices(step), strict=True):
            np.testing.assert_array_equal(row, flat[w * 32 : w * 32 + 33])


def test_order_is_reproducible_seeded_and_free_of_the_batch_size(ds):
    a = take(train_loader(ds, seq_len=32, global_batch=4, seed=0), 5)
    b = take(train_loader(ds, seq_len=32, global_batch=4, seed=0, num_threads=0), 5)
    c = take(train_loader(ds, seq_len=32, global_batch=4, seed=1), 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    d = take(train_loader(ds, seq_len=32, global_batch=2, seed=0), 10)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(d))


@pytest.mark.parametrize("threads", [0, 2])
def test_resume_continues_exactly(ds, threads):
    it = train_loader(ds, seq_len=16, global_batch=8, seed=3, num_threads=threads)
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 6)
    fresh = train_loader(ds, seq_len=16, global_batch=8, seed=3, num_threads=threads)
    fresh.set_state(state)
    assert fresh.step == 7
    assert all(np.array_equal(x, y) for x, y in zip(expected, take(fresh, 6), strict=True))
    with pytest.raises(ConfigError, match=r"train\.seq_len"):
        train_loader(ds, seq_len=32, global_batch=8, seed=3).set_state(state)


def test_process_slices_concatenate_to_the_global_batch(ds):
    whole = take(train_loader(ds, seq_len=16, global_batch=8, seed=5), 4)
    p0 = take(train_loader(ds, seq_len=16, global_batch=8, seed=5, process_index=0, process_count=2), 4)
    p1 = take(train_loader(ds, seq_len=16, global_batch=8, seed=5, process_index=1, process_count=2), 4)
    for w, a, b in zip(whole, p0, p1, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b]), w)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        train_loader(ds, seq_len=16, global_batch=9, seed=5, process_count=2)


def test_epochs_and_the_repeat_warning(ds, caplog):
    seq_len, batch = 64, 16
    it = train_loader(ds, seq_len=seq_len, global_batch=batch, seed=0)
    W = it.n_windows
    assert W == (ds.n_train_tokens - 1) // seq_len and epochs_needed(ds, 3 * W * seq_len, seq_len) == pytest.approx(3)
    per_epoch = W // batch
    with caplog.at_level(logging.WARNING, logger="research.data"):
        first = np.concatenate([it.window_indices(s, all_processes=True) for s in range(per_epoch)])
        assert len(set(first.tolist())) == len(first)  # no window twice within an epoch
        take(it, per_epoch)
        assert not caplog.records
        take(it, 2 * per_epoch + 2)
    assert len([r for r in caplog.records if "would repeat data" in r.getMessage()]) == 1


def test_validation_batches_are_fixed(ds, caplog):
    a = val_batches(ds, seq_len=32, batch=4, n_batches=3)
    assert len(a) == 3 and all(x.shape == (4, 33) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, val_batches(ds, seq_len=32, batch=4, n_batches=3), strict=True))
    halves = val_batches(ds, seq_len=32, batch=4, n_batches=3, process_index=1, process_count=2)
    np.testing.assert_array_equal(halves[0], a[0][2:])
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        val_batches(ds, seq_len=ds.n_val_tokens, batch=4, n_batches=1)
    with pytest.raises(ConfigError, match=r"train\.seq_len"):
        TokenLoader(np.arange(10, dtype=np.uint16), seq_len=16, global_batch=1, seed=0)


def test_mixture_weights_are_honoured(mix):
    assert mix.weights == pytest.approx([0.75, 0.25])
    it = train_loader(mix, seq_len=16, global_batch=BLOCK // 16, seed=0)
    whole = np.concatenate([it.sources_of(s) for s in range(16)])  # exactly one block
    assert (whole == 0).sum() == 3 * BLOCK // 4
    part = np.concatenate([it.sources_of(s) for s in range(16, 19)])  # part of the next block
    share = (part == 0).mean()
    assert abs(share - 0.75) < 3 * np.sqrt(0.75 * 0.25 / part.size)
    tokens = [np.asarray(mix.train_tokens(i)) for i in range(2)]
    batch = next(it)
    for row, s, w in zip(batch, it.sources_of(0), it.window_indices(0), strict=True):
        np.testing.assert_array_equal(row, tokens[s][w * 16 : w * 16 + 17])


def test_a_mixture_resumes_exactly_and_refuses_other_weights(mix):
    it = train_loader(mix, seq_len=16, global_batch=8, seed=2)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 4)
    fresh = train_loader(mix, seq_len=16, global_batch=8, seed=2)
    fresh.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, take(fresh, 4), strict=True))
    other = type(mix)(mix.dir, mix.meta, mix.manifest, weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"mixture weights .* resume with the same data\.sources weights"):
        train_loader(other, seq_len=16, global_batch=8, seed=2).set_state(state)


def test_a_small_weighted_source_warns_that_it_repeats(mix, caplog):
    with caplog.at_level(logging.WARNING, logger="research.data"):
        train_loader(mix, seq_len=16, global_batch=8, seed=0, total_tokens=5 * mix.n_train_tokens)
    messages = [r.getMessage() for r in caplog.records if "would repeat data of source" in r.getMessage()]
    assert messages and all("passes over its train split" in m for m in messages)


def test_each_validation_row_is_labelled_with_its_source(mix):
    rows = val_batch_sources(mix, seq_len=16, batch=4, n_batches=3)
    starts = mix.val_source_starts()
    assert len(rows) == 3 and set(np.concatenate(rows)) <= {0, 1}
    val = np.asarray(mix.val_tokens())
    batches = val_batches(mix, seq_len=16, batch=4, n_batches=3)
    per_source = [np.asarray(mix.val_tokens(i)) for i in range(2)]
    for labels, batch in zip(rows, batches, strict=True):
        for s, row in zip(labels, batch, strict=True):
            where = np.flatnonzero([np.array_equal(val[i : i + 17], row) for i in range(0, len(val) - 16, 16)])
            assert starts[s] <= where[0] * 16 < starts[s + 1]
    assert sum(len(t) for t in per_source) == len(val)
