"""The names the command line offers as choices, importable without PyTorch or NumPy.

`spiga --help` and `spiga --version` build every command's parser; the choices come from
here so that they need none of the library's heavy modules. The modules that give these
names their meaning take them from here (precisions, backends, detectors, norms, training
parts, optimisers) or keep a table keyed by them (dataset configurations, model sizes,
training stages), which a test checks against this module.
"""

from __future__ import annotations

#: Arithmetic of the network at inference (`spiga.inference.optimize.PRECISIONS`).
PRECISIONS = ("float32", "bfloat16", "float16", "float64")
#: What runs the network (`spiga.inference.backends`).
BACKENDS = ("torch", "onnxruntime", "openvino")
#: Face detectors by name (`spiga.detection.make_detector`); `file` is given as `file:BOXES`.
DETECTORS = ("blazeface", "haar", "dlib", "file")
#: The official dataset configurations (`spiga.landmarks.DATASET_LANDMARKS`): landmark layout,
#: default norm and threshold.
DATASET_CONFIGS = ("wflw", "300wpublic", "300wprivate", "merlrav", "cofw68")
#: The normalisations an NME can use (`spiga.evaluate.metrics`).
NORMS = ("corners", "pupils", "lnd_bbox", "bbox", "height", "diagonal")
#: Model sizes (`spiga.model.config.MODEL_SIZES`).
MODEL_SIZES = ("official", "small", "tiny")
#: Training stages (`spiga.train.recipe.STAGES`) and the parts a stage may freeze.
TRAIN_STAGES = ("1", "2", "3", "full")
TRAIN_PARTS = ("cnn", "pose", "window", "shape", "gat")
#: Optimisers and arithmetic of a training step (`spiga.train.config`).
OPTIMIZERS = ("adamw", "adam", "sgd")
TRAIN_PRECISIONS = ("float32", "bfloat16")
