"""Every inference engine behind the :class:`~worker.engines.base.Classifier` protocol, and ``WORKER_ENGINE=auto``'s choice.

- ``torch``: the transformers model (the reference; float32 or bfloat16 on the CPU, the only engine for CUDA);
- ``onnxruntime``: the model exported with ``torch.onnx.export``, float32 or int8 (``quantize_dynamic``);
- ``openvino``: the same export converted with ``openvino.convert_model``, float32, bfloat16 or int8 (NNCF).

Every engine shares the checkpoint's tokenizer and labels (``source.ModelSource``), so they differ
only in how the padded ids become probabilities. The modules, from the protocol up:

- ``base``: the protocol, ``Encoding``, ``classify_encoded`` (sub-batches), ``to_prediction``, ``ExportedClassifier``;
- ``labels``, ``text``, ``source``: class names, the tokenizer side, a checkpoint's tokenizer/labels and their snapshot;
- ``device``: device, torch dtype and cores when nothing was measured; ``memory``: bounds and release;
- ``torch_engine``, ``export`` (the ONNX export), ``onnxruntime_engine``, ``openvino_engine``: the engines;
- ``cache``: exports and measurements on disk; ``calibration``: the shipped texts; ``selection``: ``auto``'s rules;
- ``registry``: THE table naming each engine, its precisions and hooks;
- ``loading``: ``load_classifier``, the one place a classifier is built from settings; ``prepare``: its child process.
"""
