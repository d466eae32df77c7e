"""The model takes integer ids and one-hots them itself; one call signature serves every use."""
import os
import numpy as np
import pytest

from textstream.config import make_config
from textstream.model.network import OneHot, build_model, lstm_weights, product
from textstream.training.update import bfloat16_speedup, training_speed


def test_input_is_integer_ids_and_encoding_happens_inside():
    from textstream._tf import tf

    model = build_model(make_config("tiny"), 11)
    assert isinstance(model.encode, OneHot)
    logits = model(tf.constant([[1, 2, 3, 4]], tf.int32))
    assert logits.shape == (1, 4, 11)
    assert lstm_weights(model)[0]["kernel"].shape == (11, 4 * 16)  # one row per character id


def test_next_objective_predicts_only_after_the_window():
    from textstream._tf import tf

    model = build_model(make_config("tiny", objective="next", layers=2), 9)
    assert model(tf.zeros([3, 7], tf.int32)).shape == (3, 9)


def test_states_carry_across_calls():
    from textstream._tf import tf

    model = build_model(make_config("tiny", layers=2, embedding=5), 13)
    ids = tf.constant(np.random.default_rng(0).integers(0, 13, (2, 10)), tf.int32)
    whole = model(ids)
    first, states = model(ids[:, :6], return_state=True)
    second = model(ids[:, 6:], states=states)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5)


def test_embedding_folds_into_the_first_kernel():
    model = build_model(make_config("tiny", embedding=6), 10)
    w = lstm_weights(model)[0]["kernel"]
    expected = model.encode.embeddings.numpy() @ model.lstms[0].cell.kernel.numpy()
    np.testing.assert_allclose(w, expected, rtol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_dropout_only_in_training(dropout):
    from textstream._tf import tf

    model = build_model(make_config("tiny", dropout=dropout), 7)
    ids = tf.constant([[1, 2, 3, 4, 5]], tf.int32)
    np.testing.assert_allclose(model(ids), model(ids))
    if dropout:
        assert not np.allclose(model(ids, training=True), model(ids, training=True))


@pytest.mark.parametrize("per_window", [True, False])
def test_dropped_zeroes_a_fraction_and_scales_the_rest(per_window):
    from textstream._tf import tf
    from textstream.model.network import dropped

    p = 0.25
    out = dropped(tf.ones([40, 9, 30]), p, tf.random.Generator.from_seed(3), per_window=per_window).numpy()
    assert set(np.unique(out)) == {0.0, np.float32(1 / (1 - p))}
    assert 0.2 < np.mean(out == 0) < 0.3
    same_every_step = all(np.array_equal(out[:, t], out[:, 0]) for t in range(9))
    assert same_every_step == per_window  # per window: a unit is dropped at all of a window's steps or none
    rows = dropped(tf.ones([40, 30]), p, tf.random.Generator.from_seed(3), per_window=per_window).numpy()
    assert 0.15 < np.mean(rows == 0) < 0.35  # one step (the next objective's last output): a mask per entry


@pytest.mark.parametrize("mask, layers", [("window", 1), ("window", 2), ("step", 2)])
def test_dropout_in_training_is_the_model_with_masked_outputs(mask, layers):
    """Each layer's output is multiplied by its mask / (1 - p), drawn in order from the model's generator."""
    from textstream._tf import tf

    p, batch, steps, units = 0.3, 3, 11, 12
    model = build_model(make_config("tiny", layers=layers, units=units, dropout=p, dropout_mask=mask), 9)
    ids = tf.constant(np.random.default_rng(2).integers(0, 9, (batch, steps)), tf.int32)
    rng = tf.random.Generator.from_state(model.rng.state.numpy(), model.rng.algorithm)
    shape = [batch, 1 if mask == "window" else steps, units]
    masks = [(rng.uniform(shape) >= p).numpy() for _ in range(layers)]
    x = model.encode(ids)
    for lstm, m in zip(model.lstms, masks):
        x = tf.where(m, lstm(x)[0] / (1 - p), 0.0)
    np.testing.assert_allclose(model(ids, training=True).numpy(), model.head(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_mode, layers, embedding", [("gather", 1, 0), ("onehot", 2, 0), ("gather", 2, 5)])
def test_weight_dropout_is_the_model_with_masked_recurrent_weights(input_mode, layers, embedding):
    """In training, each layer runs with its recurrent kernel masked (one mask for the whole batch); else unchanged."""
    from textstream._tf import tf

    p = 0.4
    cfg = make_config("tiny", layers=layers, embedding=embedding, units=12)
    plain = build_model(cfg, 9, input_mode=input_mode)
    dropped = build_model(make_config("tiny", layers=layers, embedding=embedding, units=12, weight_dropout=p), 9,
                          input_mode=input_mode)
    dropped.set_weights(plain.get_weights())
    ids = tf.constant(np.random.default_rng(1).integers(0, 9, (3, 11)), tf.int32)
    np.testing.assert_array_equal(dropped(ids).numpy(), plain(ids).numpy())  # inference: the weights as they are
    # the masks the next training call draws: one uniform draw per layer, the recurrent kernel's shape, in order
    rng = tf.random.Generator.from_state(dropped.rng.state.numpy(), dropped.rng.algorithm)
    masks = [(rng.uniform([12, 48]) >= p).numpy() for _ in range(layers)]
    assert 0.4 < np.mean([m.mean() for m in masks]) < 0.8
    reference = build_model(cfg, 9, input_mode=input_mode)
    reference.set_weights(plain.get_weights())
    for lstm, mask in zip(reference.lstms, masks):
        lstm.cell.recurrent_kernel.assign(np.where(mask, lstm.cell.recurrent_kernel.numpy() / (1 - p), 0))
    with tf.GradientTape() as tape:
        trained = dropped(ids, training=True)
        loss = tf.reduce_sum(trained ** 2)
    np.testing.assert_allclose(trained.numpy(), reference(ids).numpy(), rtol=1e-5, atol=1e-6)
    grads = tape.gradient(loss, [lstm.cell.recurrent_kernel for lstm in dropped.lstms])
    for g, mask in zip(grads, masks):  # a dropped weight gets no gradient; the kept ones do
        g = np.asarray(tf.convert_to_tensor(g))
        assert np.all(g[~mask] == 0) and np.count_nonzero(g[mask]) > 0.9 * mask.sum()
    assert not np.allclose(dropped(ids, training=True), trained)  # a new mask each batch


# --- layer 0's input: a row gather of the kernel, the same function as the one-hot product -----------
def _loss_and_grads(model, ids, targets):
    from textstream._tf import tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, model(ids, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), [np.asarray(tf.convert_to_tensor(g)) for g in grads]


@pytest.mark.parametrize("objective, layers", [("sequence", 1), ("sequence", 2), ("next", 1), ("next", 2)])
def test_gathered_input_equals_the_one_hot_product(objective, layers):
    from textstream._tf import tf

    cfg = make_config("tiny", objective=objective, layers=layers, units=16)
    gathered = build_model(cfg, 23, input_mode="gather")
    one_hot = build_model(cfg, 23, input_mode="onehot")
    assert gathered.input_mode == "gather" and one_hot.input_mode == "onehot"
    assert [w.shape for w in gathered.weights] == [w.shape for w in one_hot.weights]  # the same variables
    one_hot.set_weights([w * 3 for w in gathered.get_weights()])
    gathered.set_weights(one_hot.get_weights())
    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, 23, (4, 12)), tf.int32)  # repeated ids: their gradients add up
    targets = tf.constant(rng.integers(0, 23, (4, 12) if objective == "sequence" else (4,)), tf.int32)
    np.testing.assert_array_equal(gathered(ids).numpy(), one_hot(ids).numpy())  # the same sums, in the same order
    loss_g, grads_g = _loss_and_grads(gathered, ids, targets)
    loss_o, grads_o = _loss_and_grads(one_hot, ids, targets)
    assert loss_g == pytest.approx(loss_o, rel=1e-6)
    for g, o in zip(grads_g, grads_o):  # dense gradients, as before: optimizers see no change
        np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-6)
    # states in and out
    (first, states), whole = gathered(ids[:, :5], return_state=True), one_hot(ids)
    if objective == "sequence":
        np.testing.assert_allclose(np.concatenate([first, gathered(ids[:, 5:], states=states)], axis=1), whole,
                                   atol=1e-5)


def test_checkpoints_load_whatever_the_input_mode(tmp_path):
    from textstream._tf import tf

    cfg = make_config("tiny", layers=2)
    saved = build_model(cfg, 9, input_mode="onehot")
    prefix = tf.train.Checkpoint(model=saved).save(str(tmp_path / "ckpt"))
    loaded = build_model(cfg, 9, input_mode="gather")
    tf.train.Checkpoint(model=loaded).restore(prefix).assert_existing_objects_matched()
    ids = tf.constant([[1, 2, 3, 8]], tf.int32)
    np.testing.assert_allclose(loaded(ids), saved(ids), atol=1e-6)


def test_a_visible_gpu_keeps_the_keras_layer_and_its_cudnn_kernel(monkeypatch):
    from textstream.model import network as model_module
    from textstream._tf import tf

    assert model_module.default_input_mode() == ("onehot" if tf.config.list_logical_devices("GPU") else "gather")
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["/GPU:0"] if kind == "GPU" else [])
    model = build_model(make_config("tiny"), 7)
    assert model.input_mode == "onehot" and isinstance(model.encode, OneHot)
    lstm = model.lstms[0]  # the arguments that make tf-keras choose cuDNN
    assert (lstm.activation.__name__, lstm.recurrent_activation.__name__, lstm.recurrent_dropout, lstm.unroll,
            lstm.use_bias) == ("tanh", "sigmoid", 0, False, True)
    assert build_model(make_config("tiny", embedding=4), 7).input_mode == "embedding"


def test_training_speed_is_characters_per_second_of_a_real_step():
    rate = training_speed(11, layers=1, units=4, batch_size=2, seq_len=3, seconds=0.0)
    assert rate > 0 and rate == rate and rate != float("inf")


def test_product_with_bfloat16_operands_rounds_them_and_returns_float32():
    from textstream._tf import tf

    rng = np.random.default_rng(4)
    x, kernel = rng.normal(size=(5, 3, 40)).astype(np.float32), rng.normal(size=(40, 24)).astype(np.float32)
    exact = product(tf.constant(x), tf.constant(kernel)).numpy()
    np.testing.assert_allclose(exact, np.einsum("bti,ij->btj", x, kernel), rtol=1e-5, atol=1e-5)
    mixed = product(tf.constant(x), tf.constant(kernel), tf.bfloat16)
    assert mixed.dtype == tf.float32
    rounded = [tf.cast(tf.cast(a, tf.bfloat16), tf.float32).numpy().astype(np.float64) for a in (x, kernel)]
    expected = np.einsum("bti,ij->btj", *rounded)  # the rounded operands' exact product, then one more rounding
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=2 ** -7, atol=1e-3)
    assert np.abs(mixed.numpy() - exact).max() > 1e-3  # the operands were rounded
    rows = product(tf.constant(x[:, 0]), tf.constant(kernel), tf.bfloat16).numpy()  # rank 2: the recurrent product
    np.testing.assert_array_equal(rows, mixed.numpy()[:, 0])


@pytest.mark.parametrize("input_mode, layers, embedding, objective", [
    ("gather", 1, 0, "sequence"), ("onehot", 2, 0, "sequence"), ("gather", 2, 5, "sequence"), ("gather", 2, 0, "next")])
def test_bfloat16_products_only_in_training_and_gradients_stay_float32(input_mode, layers, embedding, objective):
    """Mixed precision: training's logits are close to float32's but not equal; inference is float32's exactly."""
    from textstream._tf import tf

    def made(precision):
        cfg = make_config("tiny", layers=layers, embedding=embedding, units=24, objective=objective,
                          precision=precision)
        return build_model(cfg, 9, input_mode=input_mode)

    plain, mixed = made("float32"), made("bfloat16")
    assert mixed.precision == "bfloat16" and all(w.dtype == tf.float32 for w in mixed.weights)
    weights = [np.random.default_rng(i).normal(0, 0.4, w.shape).astype(np.float32)
               for i, w in enumerate(plain.get_weights())]
    plain.set_weights(weights)
    mixed.set_weights(weights)
    ids = tf.constant(np.random.default_rng(5).integers(0, 9, (4, 13)), tf.int32)
    np.testing.assert_array_equal(mixed(ids).numpy(), plain(ids).numpy())  # inference: float32

    def trained(model):
        with tf.GradientTape() as tape:
            logits = model(ids, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ids[:, -logits.shape[1]:]
                                                                                 if logits.shape.rank == 3
                                                                                 else ids[:, -1], logits))
        return logits.numpy(), [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    (logits, grads), (exact, exact_grads) = trained(mixed), trained(plain)
    gap = np.abs(logits - exact).max()
    assert 1e-4 < gap < 0.03 * np.abs(exact).max()
    for g, e in zip(grads, exact_grads):
        assert g.dtype == tf.float32
        cosine = float(tf.reduce_sum(g * e) / (tf.norm(g) * tf.norm(e)))
        assert cosine > 0.99


def test_bfloat16_speedup_is_a_positive_ratio():
    ratio = bfloat16_speedup(units=8, batch=2, steps=2, repeats=1)
    assert 0 < ratio < float("inf")


def test_tensorflow_starts_without_a_word_on_stderr():
    """Importing through textstream._tf and running ops prints nothing (CUDA's start included, GPU or not)."""
    import subprocess
    import sys

    code = ("from textstream._tf import tf\n"
            "x = tf.constant([[1.0, 2.0]])\n"
            "print(float(tf.reduce_sum(tf.matmul(x, tf.transpose(x)))))\n"
            "print(len(tf.config.list_logical_devices()) > 0)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5.0", "True"]
    assert done.stderr == ""
