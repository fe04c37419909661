import numpy as np
import onnxruntime as ort

from optgraph.passes.precision import trained


def test_trained_models_are_accurate_and_deterministic() -> None:
    for make, floor in ((trained.digits_cnn, 95.0), (trained.tabular_mlp, 93.0)):
        t = make()
        session = ort.InferenceSession(t.model.SerializeToString())
        logits = session.run(None, {t.input_name: t.x_test})[0]
        assert np.isfinite(logits).all()
        assert t.accuracy(logits) >= floor
        make.cache_clear()
        assert make().model.SerializeToString() == t.model.SerializeToString()
