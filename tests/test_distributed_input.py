"""Input per worker (`data.pipeline.distributed_dataset`, `make_dataset(input_context=...)`):
one pipeline gives exactly the plain stream; with two, each reads and decodes only its share
(counted by a source that counts its decodes) and the shares of a step make up the plain global
batch, in one process and across two real `MultiWorkerMirroredStrategy` processes. Errors of the
loader come back as one line naming the image."""

import collections
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
from keras_maskrcnn.data.pipeline import ExampleError, input_error_message

TIMEOUT = 120
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_MASKRCNN_DISABLE_CUSTOM_OP": "1"}


def small_config():
    return get_config("shapes", image_size=(64, 64), min_size=64, max_size=64,
                      train_min_sizes=(48, 64), horizontal_flip=True, max_instances=4)


class CountingSource:
    """A ShapesDataset that counts how often each image is decoded (`load_image` calls)."""

    def __init__(self, num_images: int, seed: int = 0) -> None:
        self.inner = ShapesDataset(num_images, image_size=64, seed=seed)
        self.image_ids = self.inner.image_ids
        self.decoded: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def load_image(self, image_id):
        with self._lock:
            self.decoded[int(image_id)] += 1
        return self.inner.load_image(image_id)

    def load_annotations(self, image_id):
        return self.inner.load_annotations(image_id)

    def file_name(self, image_id):
        return self.inner.file_name(image_id)


def batches(dataset):
    return [{k: v.numpy() for k, v in batch.items()} for (batch,) in dataset]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def concat(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("skip", [0, 2])
def test_one_input_pipeline_is_the_plain_stream(skip):
    source, config = ShapesDataset(10, image_size=64, seed=0), small_config()
    kwargs = dict(training=True, batch_size=4, seed=5, skip_batches=skip)
    plain = batches(make_dataset(source, config, **kwargs).take(6))
    one = make_dataset(source, config, input_context=tf.distribute.InputContext(1, 0, 1),
                       **kwargs)
    assert_same(batches(one.take(6)), plain)
    # one pipeline feeding two replicas (mirrored on one host): consecutive per-replica halves
    two = batches(make_dataset(source, config, input_context=tf.distribute.InputContext(1, 0, 2),
                               **kwargs).take(12))
    assert all(len(b["image_id"]) == 2 for b in two)
    assert_same([concat(two[2 * i], two[2 * i + 1]) for i in range(6)], plain)


@pytest.mark.parametrize("skip", [0, 1])
def test_two_input_pipelines_decode_each_image_once(skip):
    """Each pipeline decodes half an epoch; together every image once; step by step the two
    shares are the plain global batch (same ids, augmentation and sampler seeds)."""
    config = small_config()
    kwargs = dict(training=True, batch_size=4, seed=3, repeat=False, skip_batches=skip)
    plain = batches(make_dataset(CountingSource(12), config, **kwargs))
    shares, decoded = [], []
    for index in range(2):
        source = CountingSource(12)
        context = tf.distribute.InputContext(2, index, 2)
        shares.append(batches(make_dataset(source, config, input_context=context, **kwargs)))
        decoded.append(source.decoded)
    assert len(plain) == 3 - skip and [len(s) for s in shares] == [3 - skip, 3 - skip]
    for counts in decoded:
        assert set(counts.values()) == {1} and len(counts) == 2 * (3 - skip)
    assert not set(decoded[0]) & set(decoded[1])
    assert_same([concat(a, b) for a, b in zip(*shares, strict=True)], plain)
    if not skip:
        assert sorted({**decoded[0], **decoded[1]}) == list(range(12))
    for share, counts in zip(shares, decoded, strict=True):  # what it decoded is what it fed
        assert sorted(np.concatenate([b["image_id"] for b in share]).tolist()) == sorted(counts)


def test_two_pipelines_split_every_epoch_and_need_a_seed():
    config = small_config()
    epochs = []
    for index in range(2):
        context = tf.distribute.InputContext(2, index, 2)
        share = batches(make_dataset(CountingSource(8), config, training=True, batch_size=4,
                                     seed=9, input_context=context).take(6))
        ids = np.concatenate([b["image_id"] for b in share])
        epochs.append([sorted(ids[e * 4:(e + 1) * 4].tolist()) for e in range(3)])
    for e in range(3):  # 8 images, 2 steps of 4 per epoch: each epoch's halves are disjoint
        assert sorted(epochs[0][e] + epochs[1][e]) == list(range(8))
    assert epochs[0][0] != epochs[0][1] or epochs[0][1] != epochs[0][2]  # reshuffled
    with pytest.raises(ValueError, match="need a seed"):
        make_dataset(CountingSource(8), config, training=True, batch_size=4,
                     input_context=tf.distribute.InputContext(2, 0, 2))


WORKER = r"""
import collections, json, sys, threading
from keras_maskrcnn.runtime import RunEnvironment
env = RunEnvironment.create("multi_worker")
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset
from keras_maskrcnn.data.pipeline import distributed_dataset

class Counting(ShapesDataset):
    decoded = collections.Counter()
    lock = threading.Lock()
    def load_image(self, image_id):
        with self.lock:
            self.decoded[int(image_id)] += 1
        return super().load_image(image_id)

config = get_config("shapes", image_size=(64, 64), min_size=64, max_size=64,
                    train_min_sizes=(48, 64), horizontal_flip=True, max_instances=4)
source = Counting(12, image_size=64, seed=0)
data = distributed_dataset(env.strategy, source, config, batch_size=4, seed=3, repeat=False)
iterator = iter(data)
steps = []
for _ in range(3):
    (batch,) = next(iterator)
    steps.append([x.numpy().tolist() for x in
                  env.strategy.experimental_local_results(batch["image_id"])])
print("RESULT " + json.dumps({"replicas": env.strategy.num_replicas_in_sync, "steps": steps,
                              "decoded": source.decoded}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_processes_each_decode_their_half(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                               "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            proc.kill()
    results = []
    for proc, text in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, text[-4000:]
        line = [x for x in text.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    assert [r["replicas"] for r in results] == [2, 2]
    decoded = [{int(k): v for k, v in r["decoded"].items()} for r in results]
    assert [sorted(set(d.values())) for d in decoded] == [[1], [1]]  # each image read once
    assert [len(d) for d in decoded] == [6, 6] and not set(decoded[0]) & set(decoded[1])
    # The plain stream in a fresh process too: tf.data's seeded shuffle also depends on TF's
    # global seed, which earlier tests of this process may have set (train() sets it).
    plain = json.loads(subprocess.run(
        [sys.executable, "-c", PLAIN_STREAM], capture_output=True, text=True, env=ENV,
        timeout=TIMEOUT, check=True).stdout.splitlines()[-1])
    for step, expected in enumerate(plain):  # worker 0's share, then worker 1's: the batch
        ids = [i for r in results for i in r["steps"][step][0]]
        assert ids == expected


PLAIN_STREAM = """
import json
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset, make_dataset
config = get_config("shapes", image_size=(64, 64), min_size=64, max_size=64,
                    train_min_sizes=(48, 64), horizontal_flip=True, max_instances=4)
data = make_dataset(ShapesDataset(12, image_size=64, seed=0), config, training=True,
                    batch_size=4, seed=3, repeat=False)
print(json.dumps([batch["image_id"].numpy().tolist() for (batch,) in data]))
"""


# ------------------------------------------------------------------------------ errors
class FailingSource(CountingSource):
    """Annotations of image 5 raise a multi-line error; the source names a json file."""

    annotations_path = "/data/train.json"
    images_dir = "/data/images"

    def load_annotations(self, image_id):
        if int(image_id) == 5:
            raise ValueError("no such field\nsecond line")
        return super().load_annotations(image_id)


def test_loader_error_is_one_line_naming_the_image():
    source = FailingSource(8)
    dataset = make_dataset(source, small_config(), training=False, batch_size=4)
    with pytest.raises(tf.errors.OpError) as err:
        batches(dataset)
    line = input_error_message(err.value)
    assert line == ("cannot load image id 5 (/data/images/shape_00005.png of /data/train.json): "
                    "ValueError: no such field second line"), line
    assert line.startswith(ExampleError.__doc__.split("`")[1])


def test_tf_op_error_in_the_pipeline_gives_its_message():
    def bad(x):  # fails when run, not when traced
        return tf.reshape(tf.zeros(tf.cast(x, tf.int32) + 3), [2, 2])

    iterator = iter(tf.data.Dataset.range(4).map(bad).batch(2))

    @tf.function
    def step(it):
        return tf.reduce_sum(next(it))

    with pytest.raises(tf.errors.OpError) as err:
        step(iterator)
    assert "Graph execution error" in err.value.message
    assert input_error_message(err.value) == ("the input pipeline failed: Input to reshape is a "
                                              "tensor with 3 values, but the requested shape "
                                              "has 4")
