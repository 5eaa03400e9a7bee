"""The loss and accuracy of a run, with mixup's labels as paper 003 scored them.

Under mixup each label row is lam * y_a + (1 - lam) * y_b. Paper 003's trainer
took the loss against those mixed targets but counted an image as right when the
prediction equalled its own label y_a (`predicted == labels`), whichever image
dominated the mix; Keras's accuracy scores the argmax of the mixed row. So mixup
runs carry one more column, the image's own class, which the loss leaves out and
the accuracy reads (`data.pipeline.CifarBatches(label_column=True)`).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cifar_repro")
class OwnLabelCrossentropy(keras.losses.Loss):
    """Cross-entropy of the logits against every label column but the last."""

    def __init__(self, label_smoothing=0.0, name="own_label_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return keras.losses.categorical_crossentropy(
            y_true[:, :-1], y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="cifar_repro")
def own_label_accuracy(y_true, y_pred):
    """1 where the predicted class is the image's own, the last label column."""
    predicted = ops.argmax(y_pred, axis=-1)
    return ops.cast(ops.equal(predicted, ops.cast(y_true[:, -1], predicted.dtype)), "float32")


def loss_and_metrics(recipe):
    """(loss, metrics) for `model.compile`; history's column is `accuracy` either way."""
    if recipe.mixup:
        return (OwnLabelCrossentropy(recipe.label_smoothing),
                [keras.metrics.MeanMetricWrapper(own_label_accuracy, name="accuracy")])
    return (keras.losses.CategoricalCrossentropy(from_logits=True,
                                                 label_smoothing=recipe.label_smoothing),
            ["accuracy"])
