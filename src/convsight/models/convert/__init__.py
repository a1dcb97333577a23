"""Converters of other frameworks' model files to PyTorch: ``.onnx`` (:mod:`.onnx`, with
:mod:`.onnx_graph`) and Keras 3 ``.keras`` (:mod:`.keras`, with :mod:`.keras_layers`); what
they share is in :mod:`.converted`. Each needs an optional extra, so nothing is imported here:
``load_model`` imports a converter when a file of its kind is loaded."""
