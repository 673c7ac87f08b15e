"""kftune: tune PyTorch NLP models as Kubeflow Pipelines.

Layout (arrows point inward): ``steps -> (nlp, io) -> core``. ``core`` is pure logic
(stdlib, numpy, hyperopt); ``nlp`` is torch; ``io`` is the outside world behind Protocols.
Importing this package imports nothing heavy.
"""

from kftune._version import __version__

__all__ = ["__version__"]
