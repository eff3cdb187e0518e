"""Stage outputs on an fsspec URL: each "machine" (its own local working copy) publishes what it
computes and fetches what it reads, so work done on one is reused on another."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sft_pipeline import cache, constants, stages, storage
from sft_pipeline.config import load_config
from sft_pipeline.errors import InputError
from sft_pipeline.score import entry as score_entry

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "deployments" / "configs" / "tiny.yaml")
TINY_DATA = str(ROOT / "tests" / "data" / "tiny_chat.jsonl")


def machine(url: str, local: Path, *extra: str):
    """The tiny config as one machine sees it: shared URL, its own working copy."""
    return load_config(TINY, [f"run.output_dir={url}", f"run.local_dir={local}",
                              f"ingest.sources=[{{path: '{TINY_DATA}'}}]", *extra])


@pytest.fixture
def remote(tmp_path) -> str:
    return (tmp_path / "bucket").as_uri()  # file:// URL: fsspec's local backend, same code path as s3://


def test_outputs_are_published_and_fetched_by_another_machine(tmp_path, remote, monkeypatch):
    a = machine(remote, tmp_path / "a")
    ingest = cache.run(stages.get("ingest"), a)
    score = cache.run(stages.get("score"), a, {"ingest": ingest})
    rel = f"score/{score.key[:stages.KEY_CHARS]}"
    assert Path(score.out_dir) == tmp_path / "a" / rel
    assert (tmp_path / "bucket" / rel / constants.SCORES_FILE).exists()
    assert (tmp_path / "bucket" / rel / constants.MANIFEST_FILE).exists()

    b = machine(remote, tmp_path / "b", "filter.threshold=0.9")
    filtered = cache.run(stages.get("filter"), b, {"score": score})  # B has never seen the scores: fetched from the URL
    assert (tmp_path / "b" / rel / constants.SCORES_FILE).exists()
    fetched = pq.read_table(tmp_path / "b" / rel / constants.SCORES_FILE)
    assert fetched.equals(pq.read_table(Path(score.out_dir) / constants.SCORES_FILE))
    assert (tmp_path / "bucket" / f"filter/{filtered.key[:stages.KEY_CHARS]}" / constants.FILTERED_FILE).exists()

    # A stage already published is fetched, not recomputed, on a third machine.
    monkeypatch.setattr("sft_pipeline.score.entry.score_conversations", _must_not_run)  # where the entry calls it
    c = machine(remote, tmp_path / "c")
    again = cache.run(stages.get("score"), c, {"ingest": cache.run(stages.get("ingest"), c)})
    assert again.key == score.key and again.counts == score.counts
    assert cache.is_complete(stages.get(constants.STAGE_SCORE), c, {"ingest": ingest})


def test_missing_upstream_output_is_one_clear_error(tmp_path, remote):
    a = machine(remote, tmp_path / "a")
    ingest = cache.run(stages.get("ingest"), a)
    storage.store_of(a.run).remove(f"ingest/{ingest.key[:stages.KEY_CHARS]}")
    with pytest.raises(InputError, match="ingest output .* found neither in .* nor at file://"):
        cache.run(stages.get("score"), machine(remote, tmp_path / "b"), {"ingest": ingest})


def test_a_plain_path_keeps_outputs_where_they_are_written(tmp_path):
    cfg = load_config(TINY, [f"run.output_dir={tmp_path / 'runs'}", f"ingest.sources=[{{path: '{TINY_DATA}'}}]"])
    ingest = cache.run(stages.get("ingest"), cfg)
    assert Path(ingest.out_dir).parent.parent == tmp_path / "runs"
    assert storage.store_of(cfg.run).publish("ingest/x") is None and storage.store_of(cfg.run).url("ingest/x") is None


def _must_not_run(*args, **kwargs):
    raise AssertionError("a published stage output was recomputed")


def test_score_shards_travel_through_the_url(tmp_path, remote):
    opts = ("ingest.batch_rows=4", "run.score_shards=3")  # several row groups, three shards
    ingest = cache.run(stages.get("ingest"), machine(remote, tmp_path / "a", *opts))
    first = machine(remote, tmp_path / "a", *opts)
    plan = score_entry.plan(first, cache.output_folder(first, ingest))
    assert len(plan) == 3
    # Shards computed on two "workers" (B and C), merged on a third machine (D).
    key = cache.key(stages.get(constants.STAGE_SCORE), first, {"ingest": ingest})
    workers = [machine(remote, tmp_path / w, *opts) for w in "bcb"]
    shards = [score_entry.run_shard(worker, cache.output_folder(worker, ingest), i, groups, key)
              for i, (worker, groups) in enumerate(zip(workers, plan))]
    assert all(s.startswith("file://") for s in shards)
    merged = cache.run(stages.get("score"), machine(remote, tmp_path / "d", *opts), {"ingest": ingest}, shards=shards)
    assert not (tmp_path / "bucket" / "score" / f".{merged.key[:stages.KEY_CHARS]}.shards").exists()  # scratch gone
    plain = machine(str(tmp_path / "runs"), tmp_path / "unused", *opts)
    sequential = cache.run(stages.get("score"), plain, {"ingest": cache.run(stages.get("ingest"), plain)})
    assert merged.key == sequential.key
    assert pq.read_table(Path(merged.out_dir) / constants.SCORES_FILE).equals(
        pq.read_table(Path(sequential.out_dir) / constants.SCORES_FILE))


def test_publish_and_fetch_on_an_object_store_like_url(tmp_path):
    # memory:// has no real folders, like s3://: publish makes none, and fetch gets every file back.
    import uuid

    import fsspec

    url = f"memory://bucket-{uuid.uuid4().hex[:8]}/runs"
    src = machine(url, tmp_path / "a").run
    out = storage.store_of(src).folder("train/k1")
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "weights.bin").write_bytes(b"w" * 1000)
    (out / constants.CHECKPOINTS_DIR / "checkpoint-2").mkdir(parents=True)
    (out / constants.CHECKPOINTS_DIR / "checkpoint-2" / "optimizer.pt").write_bytes(b"o")
    (out / constants.MANIFEST_FILE).write_text("{}")
    assert storage.store_of(src).publish("train/k1") == f"{url}/train/k1"
    remote = sorted(p.rsplit("/k1/", 1)[1] for p in fsspec.filesystem("memory").find(url.split("://")[1]))
    assert remote == ["adapter/weights.bin", constants.MANIFEST_FILE]  # checkpoints stay local

    dst = machine(url, tmp_path / "b").run
    assert storage.store_of(dst).fetch("train/k1")
    assert (storage.store_of(dst).folder("train/k1") / "adapter" / "weights.bin").read_bytes() == b"w" * 1000


def test_concurrent_fetches_of_one_output_all_succeed(tmp_path, remote):
    # Several workers of one machine (Dask shards) fetching the same upstream output at once.
    from concurrent.futures import ThreadPoolExecutor

    a = machine(remote, tmp_path / "a")
    ingest = cache.run(stages.get("ingest"), a)
    rel = f"ingest/{ingest.key[:stages.KEY_CHARS]}"
    b = machine(remote, tmp_path / "b")
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: storage.store_of(b.run).fetch(rel), range(8)))
    fetched = tmp_path / "b" / rel / constants.CONVERSATIONS_FILE
    assert pq.read_table(fetched).equals(pq.read_table(Path(ingest.out_dir) / constants.CONVERSATIONS_FILE))
    assert [p.name for p in (tmp_path / "b" / "ingest").iterdir()] == [ingest.key[:stages.KEY_CHARS]]  # no temp folders


class _FailAtStep:
    """A TrainerCallback that dies when step ``step`` begins, like a preempted GPU worker."""

    def __init__(self, step: int):
        from transformers import TrainerCallback

        class Fail(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step + 1 == step:
                    raise ConnectionResetError("worker lost")

        self.callback = Fail()


def test_training_resumes_on_another_machine_from_the_checkpoint_at_the_url(tmp_path, remote, tiny_model_dir,
                                                                             monkeypatch):
    from sft_pipeline.train import trainer
    from sft_pipeline.train.resume import COMPLETE_MARKER

    opts = (f"model.name_or_path={tiny_model_dir}", "train.method=lora")  # tiny: 4 steps, a checkpoint every 2
    a = machine(remote, tmp_path / "a", *opts)
    ingest = cache.run(stages.get("ingest"), a)
    score = cache.run(stages.get("score"), a, {"ingest": ingest})
    tokenized = cache.run(stages.get("tokenize"), a, {"filter": cache.run(stages.get("filter"), a, {"score": score})})
    real = trainer.train_model
    monkeypatch.setattr(trainer, "train_model", lambda *args, callbacks=(), **kw: real(
        *args, callbacks=[*callbacks, _FailAtStep(3).callback], **kw))
    with pytest.raises(ConnectionResetError):
        cache.run(stages.get("train"), a, {"tokenize": tokenized})
    key = cache.key(stages.get(constants.STAGE_TRAIN), a, {"tokenize": tokenized})[:stages.KEY_CHARS]
    mirrored = tmp_path / "bucket" / storage.CHECKPOINTS_ROOT / "train" / key
    assert [p.name for p in mirrored.iterdir()] == ["checkpoint-2"]
    assert (mirrored / "checkpoint-2" / COMPLETE_MARKER).is_file()
    monkeypatch.setattr(trainer, "train_model", real)

    b = machine(remote, tmp_path / "b", *opts)  # the retry lands on another machine
    trained = cache.run(stages.get("train"), b, {"tokenize": tokenized})
    assert trained.counts["resumed_from_step"] == 2 and trained.counts["steps"] == 4
    assert (tmp_path / "bucket" / "train" / key / constants.ADAPTER_DIR).is_dir()
    assert not mirrored.exists(), "mirrored checkpoints are dropped once the output is published"


def test_checkpoint_mirror_on_an_object_store_like_url(tmp_path):
    import uuid
    from types import SimpleNamespace

    from sft_pipeline.train.resume import COMPLETE_MARKER, CheckpointMirror, pull_latest

    url = f"memory://bucket-{uuid.uuid4().hex[:8]}/ckpt"
    local = tmp_path / "a"
    mirror = CheckpointMirror(url)
    for step in (2, 4):
        folder = local / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        (folder / "optimizer.pt").write_bytes(b"o" * step)
        (folder / COMPLETE_MARKER).write_text("{}")
        mirror.on_save(SimpleNamespace(output_dir=str(local)), SimpleNamespace(global_step=step,
                       is_world_process_zero=True), None)
    assert storage.subfolders(url) == ["checkpoint-4"]  # the older one is dropped once the newer is complete

    assert pull_latest(url, tmp_path / "b") == 4
    assert (tmp_path / "b" / "checkpoint-4" / "optimizer.pt").read_bytes() == b"o" * 4
    assert pull_latest(url, tmp_path / "b") is None  # nothing newer than what is here


def test_checkpoint_mirror_survives_a_failed_upload_and_replaces_stale_files(tmp_path, monkeypatch, caplog):
    import uuid
    from types import SimpleNamespace

    import fsspec

    from sft_pipeline.train.resume import COMPLETE_MARKER, CheckpointMirror, pull_latest

    url = f"memory://bucket-{uuid.uuid4().hex[:8]}/ckpt"
    folder = tmp_path / "a" / "checkpoint-4"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 4}')
    (folder / COMPLETE_MARKER).write_text("{}")
    fsspec.filesystem("memory").pipe(f"{url.split('://')[1]}/checkpoint-4/rng_state_1.pth", b"stale")
    args, state = SimpleNamespace(output_dir=str(tmp_path / "a")), SimpleNamespace(global_step=4,
                                                                                   is_world_process_zero=True)

    def down(*a, **kw):
        raise ConnectionResetError("bucket unreachable")

    with monkeypatch.context() as m:
        m.setattr(storage, "push_folder", down)
        CheckpointMirror(url).on_save(args, state, None)  # training goes on
    assert "could not upload checkpoint-4" in caplog.text

    CheckpointMirror(url).on_save(args, state, None)
    assert pull_latest(url, tmp_path / "b") == 4
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoint-4").iterdir()) == [COMPLETE_MARKER,
                                                                                   "trainer_state.json"]


@pytest.mark.parametrize("where", ["path", "url"])
def test_where_outputs_live_is_asked_once_per_stage_run(where, tmp_path, remote, monkeypatch):
    # cache.run used to ask storage whether the run has a remote copy four times (url_of, is_published, publish).
    cfg = machine(remote, tmp_path / "a") if where == "url" else \
        load_config(TINY, [f"run.output_dir={tmp_path / 'runs'}", f"ingest.sources=[{{path: '{TINY_DATA}'}}]"])
    store = storage.store_of(cfg.run)
    assert isinstance(store, storage.UrlStore) == (where == "url")
    asked = []
    real = storage.store_of
    monkeypatch.setattr(storage, "store_of", lambda run: asked.append(run) or real(run))
    result = cache.run(stages.get(constants.STAGE_INGEST), cfg)
    assert len(asked) == 1
    assert (result.url is None) == (where == "path") and Path(result.out_dir).is_dir()
