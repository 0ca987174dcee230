"""What a loaded model offers: its methods, class labels and the named features it was fitted on.

The API reads this at upload (from a skops model loaded with its checked types, or an ONNX graph) to record
``methods``, ``classes`` and ``feature_names`` with the version; the worker reads it at load to feed a DataFrame
to a model fitted on named features and to check the method asked for. Pickled models are never loaded by the
API (they are code): for them the worker alone finds out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")
TEXT_METHODS = ("encode", "generate")  # Hugging Face text models (server/core/hf_archive.py): strings in
PROBA_METHODS = ("predict_proba", "predict_log_proba")  # one column per class, in `classes` order


@dataclass(frozen=True)
class ModelInfo:
    methods: list[str]
    classes: list[Any] | None  # JSON-safe labels of a classifier, in the order of its probability columns
    feature_names: list[str] | None  # names it was fitted on, in its order; None: it takes an array
    selects_by_name: bool = False  # a step picks columns by name: the features' types cannot be read off it

    @property
    def takes_frame(self) -> bool:
        return self.feature_names is not None


def _plain(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _selects_by_name(model: Any) -> bool:
    """Tell whether a ColumnTransformer (or an encoder) inside the model works on named, typed columns."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(model, ColumnTransformer):
        return True
    if isinstance(model, Pipeline):
        return any(_selects_by_name(step) for _, step in model.steps if step not in (None, "passthrough"))
    return type(model).__name__ in ("OneHotEncoder", "OrdinalEncoder", "TargetEncoder")


def describe_estimator(model: Any) -> ModelInfo:
    """Describe a scikit-learn-style estimator (or anything with predict)."""
    methods = [m for m in METHODS if callable(getattr(model, m, None))]
    classes = None
    raw = getattr(model, "classes_", None)
    if raw is not None and ("predict_proba" in methods or "decision_function" in methods):
        try:
            classes = _plain(raw)
        except TypeError:
            classes = None
    names = getattr(model, "feature_names_in_", None)
    feature_names = [str(n) for n in _plain(names)] if names is not None else None
    try:
        by_name = feature_names is not None and _selects_by_name(model)
    except ImportError:  # no scikit-learn here: not one of its models
        by_name = False
    return ModelInfo(methods=methods, classes=classes, feature_names=feature_names, selects_by_name=by_name)


def onnx_probability_output(model: Any) -> tuple[str | None, list[Any] | None]:
    """Return an ONNX classifier's probability output name and class labels (skl2onnx: ZipMap or a tensor)."""
    outputs = [o.name for o in model.graph.output]
    labels: list[Any] | None = None
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_strings", "classlabels_int64s"):
                found = [s.decode() for s in attr.strings] if attr.strings else list(attr.ints)
                if found:
                    labels = found
    if len(outputs) < 2 or labels is None:
        return None, labels
    return outputs[1], labels


def describe_onnx(model: Any) -> ModelInfo:
    """Describe an ONNX graph: predict is its first output; a classifier's second output is predict_proba."""
    proba, labels = onnx_probability_output(model)
    methods = ["predict", "predict_proba"] if proba else ["predict"]
    return ModelInfo(methods=methods, classes=labels if proba else None, feature_names=None)
