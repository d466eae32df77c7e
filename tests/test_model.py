"""The model takes integer ids and one-hots them itself; one call signature serves every use."""
import numpy as np
import pytest

from textstream.config import make_config
from textstream.model import OneHot, build_model, lstm_weights


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
